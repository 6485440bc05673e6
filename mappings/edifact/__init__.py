"""UN/EDIFACT: the directory, the syntax layer (tokenizer, serializer) and the structure validator."""
