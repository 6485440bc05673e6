"""Road Cargo Gateway: the domain core (canonical record, identifiers, rules, services, store)."""
