"""The simulated Hong Kong border day of ``bench/border_day.py``: who crosses where and when, what they
carry, through which channel it was lodged, what is amended or cancelled. Pure generation from a seed,
no I/O; the message bodies are rendered here too (CUSCAR with the segment writer of
``bench/edifact_ingest.py``, XML with the project's own ``mappings.xml_eci``)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.edifact_ingest import _GOODS, _PACKAGES, CHINESE, LATIN, SENDER, Syntax, _container, _name, _split
from mappings.xml_eci import cargo_information, consignment_to_xml, to_bytes

LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # registration marks: no I, O or Q (as bench/bundling.py)
TRUCKS_PER_DAY = 17_000
HOUR = 3600.0
DAY = 24 * HOUR

# Share of the day's goods vehicles per land control point, and the hours their cargo lanes are busy
# (the gateway's own opening hours stay at the configured 00:00-24:00; these shape the arrivals).
CONTROL_POINTS: dict[str, tuple[float, float, float]] = {
    "LMC": (0.33, 0.0, 24.0),
    "SBC": (0.22, 6.5, 24.0),
    "HZM": (0.15, 0.0, 24.0),
    "HYW": (0.13, 7.0, 22.0),
    "MKT": (0.12, 7.0, 22.0),
    "STK": (0.05, 7.0, 20.0),
}
CHANNELS = {"edifact": 0.40, "xml": 0.25, "sftp": 0.20, "json": 0.15}
CONSIGNMENTS_PER_TRUCK = [0.30, 0.27, 0.20, 0.13, 0.10]  # 1 to 5; 2.46 on average
AMEND_RATE = 0.06  # of consignments, once; a fifth of them after the truck was bundled
CANCEL_RATE = 0.02  # of consignments, before bundling
TRANSHIPMENT_RATE = 0.004  # of trucks, half land-to-air, half air-to-land; at least one of each
FILERS = {"edifact": 10, "xml": 8, "sftp": 4, "json": 16}  # xml: even ones over HTTP, odd ones over SOAP
BATCH_SECONDS = {"edifact": 15 * 60.0, "sftp": 30 * 60.0}  # interchanges collect a window's trucks


@dataclass
class Consignment:
    index: int
    truck: int
    reference: str
    record: dict[str, Any]
    amended: dict[str, Any] | None = None
    amend_at: float | None = None
    cancel_at: float | None = None


@dataclass
class Truck:
    index: int
    control_point: str
    direction: str
    vehicle: str
    driver: int
    channel: str
    filer: int
    lodge_at: float
    bundle_at: float
    arrive_at: float
    consignments: list[Consignment] = field(default_factory=list)
    transhipment: str | None = None  # LAND_TO_AIR or AIR_TO_LAND
    elock: str | None = None


@dataclass
class Batch:
    """One lodgement of several trucks' consignments by one filer: an interchange, a file, a document."""

    at: float
    channel: str
    filer: int
    trucks: list[int]


@dataclass
class Plan:
    seed: int
    scale: float
    day: str  # the calendar date of the replay, Hong Kong time (every expected_crossing)
    trucks: list[Truck]
    batches: list[Batch]
    filers: dict[str, int]
    drivers: int

    @property
    def consignments(self) -> list[Consignment]:
        return [c for t in self.trucks for c in t.consignments]


def vehicle(i: int) -> str:
    """A Hong Kong registration mark, unique per trip of the day: two letters and up to four digits."""
    return f"{LETTERS[i // 9999 % 23]}{LETTERS[i // 9999 // 23 % 23]}{i % 9999 + 1}"


def _arrival(rng: random.Random, opens: float, closes: float) -> float:
    """A morning peak around 10:30, an evening peak around 17:30, a thinner flow through the night."""
    while True:
        pick = rng.random()
        if pick < 0.18:
            hour = rng.uniform(0, 24)
        elif pick < 0.56:
            hour = rng.gauss(10.5, 1.6)
        else:
            hour = rng.gauss(17.5, 2.0)
        if opens + 0.05 <= hour < closes - 0.05:
            return hour * HOUR


def _party(rng: random.Random, hong_kong: bool, chinese: bool) -> dict[str, Any]:
    if hong_kong:
        return {
            "name": _name(rng, False).title()[:70],
            "address": f"{rng.randint(1, 300)} Harbour Road, Wan Chai",
            "city": "Hong Kong",
            "country": "HK",
        }
    return {
        "name": _name(rng, chinese),
        "address": f"{rng.randint(1, 999)} INDUSTRIAL AVENUE, BAO'AN DISTRICT",
        "city": rng.choice(["SHENZHEN", "DONGGUAN", "GUANGZHOU", "HUIZHOU"]),
        "postcode": "518000",
        "country": "CN",
    }


def _record(
    rng: random.Random, reference: str, truck: Truck, day: str, chinese: bool, container: str | None
) -> dict[str, Any]:
    importing = truck.direction == "IMPORT"
    items = []
    for _ in range(rng.choices([1, 2, 3, 4], [0.5, 0.25, 0.15, 0.1])[0]):
        hs, text = rng.choice(_GOODS)
        package, package_text = rng.choice(_PACKAGES)
        count = rng.randint(1, 400)
        items.append(
            {
                "package_count": count,
                "package_type": package,
                "package_description": package_text.lower(),
                "description": text.lower() + (" 玩具" if chinese else ""),
                "hs_code": hs,
                "gross_mass_kg": round(count * rng.uniform(2, 25), 1),
                "value": {"amount": f"{count * rng.randint(50, 900)}.00", "currency": "HKD"},
                "origin_country": "CN" if importing else rng.choice(["HK", "CN", "JP", "VN"]),
            }
        )
    record: dict[str, Any] = {
        "direction": truck.direction,
        "submitter_reference": reference,
        "consignor": _party(rng, not importing, chinese),
        "consignee": _party(rng, importing, False),
        "expected_crossing": day,
        "control_point": truck.control_point,
        "items": items,
        "place_of_loading": "CNSZX" if importing else "HKHKG",
        "place_of_discharge": "HKHKG" if importing else "CNSZX",
        "vehicle_hint": truck.vehicle,
    }
    if container:
        record["equipment"] = [{"number": container, "seals": [f"SL{rng.randrange(10**6):06d}"]}]
    if truck.transhipment:
        record["transhipment"] = {
            "mode": truck.transhipment,
            "airport": "HKHKG",
            "air_waybill": f"160-{rng.randrange(10**8):08d}",
            "flight": f"CX{rng.randint(100, 999)}",
        }
    return record


def _amendment(rng: random.Random, record: dict[str, Any]) -> dict[str, Any]:
    """What filers amend most: the count, mass and value of a goods item."""
    changed = {**record, "items": [dict(i) for i in record["items"]]}
    item = rng.choice(changed["items"])
    item["package_count"] += rng.randint(1, 20)
    item["gross_mass_kg"] = round(item["gross_mass_kg"] * 1.05 + 1, 1)
    return changed


def make_plan(seed: int, scale: float, day: str, trips_per_driver: int = 4) -> Plan:
    rng = random.Random(seed)
    n = max(1, round(TRUCKS_PER_DAY * scale))
    filers = {
        ch: max(1, min(count, round(n * share / 8)))
        for (ch, count), share in zip(FILERS.items(), CHANNELS.values(), strict=True)
    }
    if filers["xml"] == 1 and n >= 8:
        filers["xml"] = 2  # one over HTTP, one over SOAP
    drivers = max(1, -(-n // trips_per_driver))
    points = list(CONTROL_POINTS)
    transhipments = max(2, round(n * TRANSHIPMENT_RATE)) if n >= 20 else 0
    trucks: list[Truck] = []
    serial = 0
    for i in range(n):
        cp = rng.choices(points, [v[0] for v in CONTROL_POINTS.values()])[0]
        _, opens, closes = CONTROL_POINTS[cp]
        arrive = _arrival(rng, opens, closes)
        # Lodged 1.5 to 6 hours ahead (early trucks the evening before: squeezed into the first hours),
        # bundled 20 to 90 minutes ahead.
        bundle = arrive - min(rng.uniform(20, 90) * 60, arrive * 0.2)
        lodge = arrive - min(rng.uniform(1.5, 6) * HOUR, arrive * 0.6)
        tranship = None
        if i < transhipments:
            tranship = "LAND_TO_AIR" if i % 2 == 0 else "AIR_TO_LAND"
        direction = rng.choice(["IMPORT", "EXPORT"])
        if tranship:
            direction = "IMPORT" if tranship == "LAND_TO_AIR" else "EXPORT"
        channel = "json" if tranship else rng.choices(list(CHANNELS), list(CHANNELS.values()))[0]
        truck = Truck(
            index=i,
            control_point=cp,
            direction=direction,
            vehicle=vehicle(i),
            driver=rng.randrange(drivers),
            channel=channel,
            filer=rng.randrange(filers[channel]),
            lodge_at=lodge,
            bundle_at=bundle,
            arrive_at=arrive,
            transhipment=tranship,
            elock=f"EL{rng.randrange(10**7):07d}" if tranship else None,
        )
        chinese = channel == "edifact" and truck.filer == 0 and n > 1  # one filer writes UNOY in Chinese
        container = _container(rng) if rng.random() < 0.5 else None
        count = 1 if tranship else rng.choices([1, 2, 3, 4, 5], CONSIGNMENTS_PER_TRUCK)[0]
        for _ in range(count):
            serial += 1
            reference = f"S{seed}-{channel[:2].upper()}{truck.filer}-{serial:06d}"
            c = Consignment(serial - 1, i, reference, _record(rng, reference, truck, day, chinese, container))
            draw = rng.random()
            if draw < CANCEL_RATE and not tranship:
                c.cancel_at = lodge + (bundle - lodge) * rng.uniform(0.3, 0.8)
            elif draw < CANCEL_RATE + AMEND_RATE and not tranship:
                c.amended = _amendment(rng, c.record)
                if rng.random() < 0.2:
                    c.amend_at = bundle + (arrive - bundle) * rng.uniform(0.2, 0.6)
                else:
                    c.amend_at = lodge + (bundle - lodge) * rng.uniform(0.3, 0.8)
            truck.consignments.append(c)
        trucks.append(truck)
    return Plan(seed, scale, day, trucks, _batches(trucks), filers, drivers)


def _batches(trucks: list[Truck]) -> list[Batch]:
    """EDIFACT and SFTP filers send what a window collected at its end; XML and SOAP one document per
    truck; JSON one request per consignment (not a batch)."""
    grouped: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    out: list[Batch] = []
    for t in trucks:
        if t.channel in BATCH_SECONDS:
            window = BATCH_SECONDS[t.channel]
            grouped[(t.channel, t.filer, int(t.lodge_at // window))].append(t.index)
        elif t.channel == "xml":
            out.append(Batch(t.lodge_at, "xml", t.filer, [t.index]))
    for (channel, filer, k), members in grouped.items():
        window = BATCH_SECONDS[channel]
        # sent at the window's end, but never after the earliest bundling of its trucks
        at = min((k + 1) * window, min(trucks[i].bundle_at for i in members) - 60)
        out.append(Batch(max(at, k * window), channel, filer, members))
    out.sort(key=lambda b: b.at)
    return out


# -- rendering ------------------------------------------------------------------------------------------


def syntax_for(channel: str, filer: int) -> Syntax:
    return CHINESE if channel == "edifact" and filer == 0 else LATIN


def edi_sender(channel: str, filer: int) -> str:
    return f"{SENDER}{channel[:2].upper()}{filer}"


def _number(value: float | str, s: Syntax) -> str:
    return str(value).replace(".", s.decimal)


def cuscar(
    s: Syntax,
    sender: str,
    control_reference: str,
    messages: list[tuple[str, Truck, list[tuple[Consignment, dict[str, Any] | None, str | None]]]],
    prepared: datetime,
) -> bytes:
    """A CUSCAR D.96B interchange after the implementation guide of design section 9: one message per
    (function, truck), function 9 lodge (records), 5 amend, 1 cancel (records with
    their CCRN; a record of None gives the CNI and RFF only)."""
    syntax4 = s.identifier.endswith(":4")
    out = [
        s.una,
        s.segment(
            "UNB",
            s.identifier.split(":"),
            [sender, "ZZZ"],
            ["HKCUSTOMS", "ZZZ"],
            [prepared.strftime("%Y%m%d" if syntax4 else "%y%m%d"), prepared.strftime("%H%M")],
            control_reference,
        ),
    ]
    for number, (function, truck, entries) in enumerate(messages, start=1):
        importing = truck.direction == "IMPORT"
        first = next((r for _c, r, _ccrn in entries if r is not None), None)
        body = [
            s.segment("UNH", str(number), ["CUSCAR", "D", "96B", "UN"]),
            s.segment("BGM", "85", f"{control_reference}-{number}", function),
            s.segment("DTM", ["137", prepared.strftime("%Y%m%d%H%M"), "203"]),
            s.segment("TDT", "20", "", "3", "", "", "", "", truck.vehicle),
            s.segment("LOC", "41" if importing else "42", truck.control_point),
            s.segment(
                "DTM",
                [
                    "132" if importing else "133",
                    entries[0][0].record["expected_crossing"].replace("-", ""),
                    "102",
                ],
            ),
            s.segment("GIS", "23" if importing else "22"),
        ]
        for unit in (first or {}).get("equipment", []):
            body += [s.segment("EQD", "CN", unit["number"])]
            body += [s.segment("SEL", seal) for seal in unit.get("seals", [])]
        for seq, (c, record, ccrn) in enumerate(entries, start=1):
            body.append(s.segment("CNI", str(seq), c.reference))
            body.append(s.segment("RFF", ["XC", ccrn] if ccrn else ["CMR", c.reference]))
            if record is None:
                continue
            body += [
                s.segment("LOC", "9", record["place_of_loading"]),
                s.segment("LOC", "11", record["place_of_discharge"]),
                s.segment("LOC", "27", record["items"][0]["origin_country"]),
            ]
            for qualifier, role in (("CZ", "consignor"), ("CN", "consignee")):
                p = record[role]
                body.append(
                    s.segment(
                        "NAD",
                        qualifier,
                        "",
                        "",
                        _split(p["name"], 35),
                        _split(p["address"], 35),
                        p.get("city", ""),
                        "",
                        p.get("postcode", ""),
                        p["country"],
                    )
                )
            for n, item in enumerate(record["items"], start=1):
                body += [
                    s.segment(
                        "GID",
                        str(n),
                        [
                            str(item["package_count"]),
                            item["package_type"],
                            "",
                            "6",
                            item["package_description"],
                        ],
                    ),
                    s.segment("FTX", "AAA", "", "", _split(item["description"], 70)),
                    s.segment("MEA", "AAE", "G", ["KGM", _number(item["gross_mass_kg"], s)]),
                    s.segment("MOA", ["40", _number(item["value"]["amount"], s), item["value"]["currency"]]),
                    s.segment("CST", "", item["hs_code"]),
                ]
        body.append(s.segment("UNT", str(len(body) + 1), str(number)))
        out += body
    out.append(s.segment("UNZ", str(len(messages)), control_reference))
    return "".join(out).encode(s.codec)


def xml_document(entries: list[tuple[str, dict[str, Any] | None, str | None]]) -> bytes:
    """A CargoInformation document: (action, record, ccrn) per consignment."""
    return to_bytes(cargo_information(consignment_to_xml(a, r, ccrn) for a, r, ccrn in entries))
