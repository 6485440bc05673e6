"""A prefilled goods declaration as CUSDEC D.96B (design section 9, declarations).

Rendered from the declaration's JSON shape (``gateway.declaration_document.build_prefill``), not from the raw
record, so every format says the same. ``BGM+929`` is a goods declaration for importation, ``BGM+830``
one for exportation (UNCL 1001). A field still to be supplied by the declarant is left out of its
segment and named in a header ``FTX+ACB`` (additional information), one per missing field: nothing is
invented to fill a mandatory-looking place.

| pos  | group | segment                              | from the declaration                           |
|------|-------|--------------------------------------|------------------------------------------------|
| 0020 | -     | BGM+929/830+CCRN+9                   | ``kind``; the CCRN as the document number      |
| 0040 | -     | LOC+41/42+CP                         | ``transport.control_point`` (office of entry / exit) |
| 0040 | -     | LOC+28+CC                            | ``destination_country`` (export)               |
| 0050 | -     | DTM+137:CCYYMMDDHHMM:203             | ``prepared_at`` (Hong Kong time)               |
| 0050 | -     | DTM+178/186:CCYYMMDDHHMM:203         | ``transport.crossed_at``: actual arrival / departure |
| 0110 | -     | FTX+ACB+++MISSING:FIELD:WHAT         | ``missing_fields``                             |
| 0130 | SG1   | RFF+XC:CCRN                          | ``transport.document_reference``, the CCRN    |
| 0210 | SG4   | TDT+20++3+++++VRN                    | road transport; ``transport.vehicle``          |
| 0280 | SG6   | NAD+DT / IM or EX / CZ / CN          | declarant, importer or exporter, consignor, consignee|
| 0290 | SG6   | RFF+XA:ID (after NAD+IM/EX)          | the trader's business registration number      |
| 0410 | -     | UNS+D                                | end of the heading                             |
| 0430 | SG10  | DMS+CCRN+929/830+LINES               | number of lines                                |
| 1220 | SG30  | CST+LINE+HSCODE                      | ``lines[].hs_code``                            |
| 1230 | SG30  | FTX+AAA+++TEXT                       | ``lines[].description``                        |
| 1240 | SG30  | LOC+27+CC                            | ``lines[].origin_country``                     |
| 1260 | SG30  | MEA+AAE+G+KGM:MASS                   | ``lines[].gross_mass_kg``                      |
| 1260 | SG30  | MEA+AAR++UNIT:QTY                    | ``lines[].quantity`` (1st specified tariff quantity) |
| 1300 | SG31  | PAC+COUNT++TYPE::6:DESCRIPTION       | ``lines[].packages``                           |
| 1320 | SG32  | PCI+24+MARKS                         | ``lines[].marks``                              |
| 1350 | SG33  | MOA+40:AMOUNT:CUR                    | ``lines[].value`` (customs value)              |
| 1920 | -     | UNS+S                                | start of the summary                           |
| 1930 | -     | CNT+5:LINES                          | number of customs item detail lines            |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydifact.segments import Segment

from gateway.clock import HONG_KONG
from mappings.edifact import syntax

DOCUMENTS = {"IMPORT": ("929", "41", "178", "IM"), "EXPORT": ("830", "42", "186", "EX")}


def _chunks(text: str, width: int, parts: int) -> list[str]:
    return [text[i : i + width] for i in range(0, min(len(text), width * parts), width)] or [""]


def _given(value: Any) -> bool:
    """A value the declaration holds: present and not marked ``missing``."""
    if value is None or value == "" or value == {}:
        return False
    return not (isinstance(value, Mapping) and value.get("missing") is True)


def _text(value: Any) -> str:
    return str(value) if _given(value) else ""


def _party(qualifier: str, party: Any) -> Segment:
    if not _given(party):
        return Segment("NAD", qualifier)
    if "party_id" in party:  # the declarant: a party of the gateway
        return Segment(
            "NAD", qualifier, [party["party_id"], "", "ZZZ"], "", _chunks(str(party["name"]), 35, 5)
        )
    return Segment(
        "NAD",
        qualifier,
        "",
        "",
        _chunks(str(party["name"]), 35, 5),
        _chunks(str(party["address"]), 35, 4),
        _text(party.get("city")),
        "",
        _text(party.get("postcode")),
        _text(party.get("country")),
    )


def _moment(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(HONG_KONG).strftime("%Y%m%d%H%M")


def cusdec_body(declaration: Mapping[str, Any]) -> list[Segment]:
    """The segments between UNH and UNT of a (prefilled or completed) declaration."""
    kind = str(declaration["kind"])
    document, office, crossed, trader_code = DOCUMENTS[kind]
    trader = "importer" if kind == "IMPORT" else "exporter"
    ccrn = str(declaration["ccrn"])
    transport = declaration.get("transport") or {}
    body = [Segment("BGM", document, ccrn, "9")]
    if _given(transport.get("control_point")):
        body.append(Segment("LOC", office, str(transport["control_point"])))
    if kind == "EXPORT" and _given(declaration.get("destination_country")):
        body.append(Segment("LOC", "28", str(declaration["destination_country"])))
    if declaration.get("prepared_at"):
        body.append(Segment("DTM", ["137", _moment(str(declaration["prepared_at"])), "203"]))
    if _given(transport.get("crossed_at")):
        body.append(Segment("DTM", [crossed, _moment(str(transport["crossed_at"])), "203"]))
    for entry in declaration.get("missing_fields") or []:
        text = f"MISSING:{entry['field']}:{entry['supply']}"
        body.append(Segment("FTX", "ACB", "", "", _chunks(text, 70, 5)))
    body.append(Segment("RFF", ["XC", _text(transport.get("document_reference")) or ccrn]))
    body.append(Segment("TDT", "20", "", "3", "", "", "", "", _text(transport.get("vehicle"))))
    body.append(_party("DT", declaration.get("declarant")))
    trader_party = declaration.get(trader) or {}
    body.append(_party(trader_code, trader_party))
    if _given(trader_party) and _given(trader_party.get("id")):
        body.append(Segment("RFF", ["XA", str(trader_party["id"])]))
    body.append(_party("CZ", declaration.get("consignor")))
    body.append(_party("CN", declaration.get("consignee")))
    lines = list(declaration.get("lines") or [])
    body.append(Segment("UNS", "D"))
    body.append(Segment("DMS", ccrn, document, str(len(lines))))
    for n, line in enumerate(lines, start=1):
        hs = line.get("hs_code")
        number = str(line.get("line_number") or n)
        body.append(Segment("CST", number, str(hs)) if _given(hs) else Segment("CST", number))
        body.append(Segment("FTX", "AAA", "", "", _chunks(str(line["description"]), 70, 5)))
        if _given(line.get("origin_country")):
            body.append(Segment("LOC", "27", str(line["origin_country"])))
        if _given(line.get("gross_mass_kg")):
            body.append(Segment("MEA", "AAE", "G", ["KGM", str(line["gross_mass_kg"])]))
        quantity = line.get("quantity")
        if _given(quantity):
            body.append(Segment("MEA", "AAR", "", [str(quantity["unit"]), str(quantity["amount"])]))
        packages = line["packages"]
        body.append(
            Segment(
                "PAC",
                str(packages["count"]),
                "",
                [str(packages["type"]), "", "6", str(packages.get("description", ""))],
            )
        )
        if line.get("marks"):
            body.append(Segment("PCI", "24", _chunks(str(line["marks"]), 35, 10)))
        value = line.get("value")
        if _given(value):
            body.append(Segment("MOA", ["40", str(value["amount"]), str(value["currency"])]))
    body.append(Segment("UNS", "S"))
    body.append(Segment("CNT", ["5", str(len(lines))]))
    return body


def cusdec_message(declaration: Mapping[str, Any], reference: str = "1") -> list[Segment]:
    """UNH ... UNT of a CUSDEC D.96B."""
    return syntax.build_message(reference, ("CUSDEC", "D", "96B", "UN"), cusdec_body(declaration))


def cusdec_interchange(
    declarations: Sequence[Mapping[str, Any]],
    prepared: datetime,
    *,
    sender: str,
    recipient: str,
    control_reference: str,
    charset: str = "UNOC",
) -> bytes:
    """One or more declarations as a whole interchange (one message each), ready to download."""
    return syntax.build_interchange(
        [cusdec_message(d, str(n)) for n, d in enumerate(declarations, start=1)],
        sender=sender,
        recipient=recipient,
        control_reference=control_reference,
        prepared=prepared.astimezone(HONG_KONG).replace(tzinfo=None),
        charset=charset,
    )
