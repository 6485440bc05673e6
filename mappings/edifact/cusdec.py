"""A CUSDEC D.96B goods declaration prefilled from a consignment (design section 9, declarations).

A first version: what the cargo record can supply, in the places of CUSDEC_D.96B; the declarant
completes the rest. ``BGM+929`` is an import declaration, ``BGM+830`` an export one (UNCL 1001).

| pos  | group | segment                         | from the record                                   |
|------|-------|---------------------------------|---------------------------------------------------|
| 0020 | -     | BGM+929/830+CCRN+9              | the kind of declaration; the CCRN as its number   |
| 0040 | -     | LOC+41/42+CP                    | ``control_point`` (office of entry / exit)        |
| 0050 | -     | DTM+137:CCYYMMDDHHMM:203        | when the declaration was prefilled (HK time)      |
| 0090 | -     | EQD+CN+NUMBER, SEL+SEAL         | ``equipment``                                     |
| 0130 | SG1   | RFF+XC:CCRN                     | the cargo control number (CCRN)                   |
| 0210 | SG4   | TDT+20++3+++++VRN               | ``vehicle_hint``                                  |
| 0280 | SG6   | NAD+CZ / NAD+CN                 | ``consignor`` / ``consignee``                     |
| 0410 | -     | UNS+D                           | end of the heading                                |
| 0430 | SG10  | DMS+REF+929/830+ITEMS           | ``submitter_reference``, number of items          |
| 1220 | SG30  | CST+N+HSCODE                    | ``items[].hs_code``                               |
| 1230 | SG30  | FTX+AAA+++TEXT                  | ``items[].description``                           |
| 1240 | SG30  | LOC+27+CC                       | ``items[].origin_country``                        |
| 1260 | SG30  | MEA+AAE+G+KGM:MASS              | ``items[].gross_mass_kg``                         |
| 1300 | SG31  | PAC+N++TYPE::6:DESCRIPTION      | packages                                          |
| 1320 | SG32  | PCI+24+MARKS                    | ``items[].marks``                                 |
| 1350 | SG33  | MOA+40:AMOUNT:CUR               | ``items[].value``                                 |
| 1920 | -     | UNS+S                           | start of the summary                              |
| 1930 | -     | CNT+5:ITEMS                     | number of goods items                             |
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydifact.segments import Segment

from gateway.clock import HONG_KONG
from mappings.edifact import syntax

KINDS = {"import": ("929", "41"), "export": ("830", "42")}


def _chunks(text: str, width: int, parts: int) -> list[str]:
    return [text[i : i + width] for i in range(0, min(len(text), width * parts), width)] or [""]


def _party(qualifier: str, party: Mapping[str, Any]) -> Segment:
    return Segment(
        "NAD",
        qualifier,
        party.get("id", ""),
        "",
        _chunks(str(party.get("name", "")), 35, 5),
        _chunks(str(party.get("address", "")), 35, 4),
        party.get("city", ""),
        "",
        party.get("postcode", ""),
        party.get("country", ""),
    )


def cusdec_body(ccrn: str, record: Mapping[str, Any], kind: str, prepared: datetime) -> list[Segment]:
    """The segments between UNH and UNT of a declaration prefilled from ``record``."""
    document, office = KINDS[kind]
    body = [Segment("BGM", document, ccrn, "9")]
    if record.get("control_point"):
        body.append(Segment("LOC", office, str(record["control_point"])))
    body.append(Segment("DTM", ["137", prepared.astimezone(HONG_KONG).strftime("%Y%m%d%H%M"), "203"]))
    for equipment in record.get("equipment") or []:
        body.append(Segment("EQD", "CN", str(equipment["number"])))
    for equipment in record.get("equipment") or []:
        body += [Segment("SEL", str(seal)[:10]) for seal in equipment.get("seals") or []]
    body.append(Segment("RFF", ["XC", ccrn]))
    if record.get("vehicle_hint"):
        body.append(Segment("TDT", "20", "", "3", "", "", "", "", str(record["vehicle_hint"])))
    body.append(_party("CZ", record["consignor"]))
    body.append(_party("CN", record["consignee"]))
    items = list(record.get("items") or [])
    body.append(Segment("UNS", "D"))
    body.append(Segment("DMS", str(record["submitter_reference"]), document, str(len(items))))
    for n, item in enumerate(items, start=1):
        body.append(
            Segment("CST", str(n), str(item.get("hs_code", "")))
            if item.get("hs_code")
            else Segment("CST", str(n))
        )
        body.append(Segment("FTX", "AAA", "", "", _chunks(str(item["description"]), 70, 5)))
        if item.get("origin_country"):
            body.append(Segment("LOC", "27", str(item["origin_country"])))
        if item.get("gross_mass_kg") is not None:
            body.append(Segment("MEA", "AAE", "G", ["KGM", str(item["gross_mass_kg"])]))
        body.append(
            Segment(
                "PAC",
                str(item["package_count"]),
                "",
                [str(item["package_type"]), "", "6", str(item.get("package_description", ""))],
            )
        )
        if item.get("marks"):
            body.append(Segment("PCI", "24", _chunks(str(item["marks"]), 35, 10)))
        if item.get("value"):
            body.append(Segment("MOA", ["40", str(item["value"]["amount"]), str(item["value"]["currency"])]))
    body.append(Segment("UNS", "S"))
    body.append(Segment("CNT", ["5", str(len(items))]))
    return body


def cusdec_message(
    ccrn: str, record: Mapping[str, Any], kind: str, prepared: datetime, reference: str = "1"
) -> list[Segment]:
    """UNH ... UNT of a CUSDEC D.96B; ``kind`` is ``import`` or ``export``."""
    return syntax.build_message(
        reference, ("CUSDEC", "D", "96B", "UN"), cusdec_body(ccrn, record, kind, prepared)
    )


def cusdec_interchange(
    ccrn: str,
    record: Mapping[str, Any],
    kind: str,
    prepared: datetime,
    *,
    sender: str,
    recipient: str,
    control_reference: str,
    charset: str = "UNOC",
) -> bytes:
    """The declaration as a whole interchange, ready to send or download."""
    return syntax.build_interchange(
        [cusdec_message(ccrn, record, kind, prepared)],
        sender=sender,
        recipient=recipient,
        control_reference=control_reference,
        prepared=prepared.astimezone(HONG_KONG).replace(tzinfo=None),
        charset=charset,
    )
