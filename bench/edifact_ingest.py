"""EDIFACT ingest benchmark (issue 3, "Scale and speed"): one command.

    .venv/bin/python bench/edifact_ingest.py [--consignments 10000] [--pg URL | --no-pg]
        [--reader-process BYTES]

Generates a realistic CUSCAR load of N consignments (1 to 20 goods items each, release characters, long
names split over components, custom UNA separators with a decimal comma; a fifth of it as a UNOY syntax 4
interchange with Chinese names), then measures in the same run:

- pydifact's own parse of the same files alone (``Parser().parse``, streamed, every segment);
- the whole ingest (read, map, validate, profile, store, CCRN, CONTRL and CUSRES stored) on SQLite and
  on PostgreSQL (a temporary database created and dropped on the server given by ``--pg``);

and prints consignments per second, the ratio of the whole ingest's speed to pydifact's parse alone, and
the peak memory (maximum resident set size) of each ingest, each run in a fresh process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import resource
import sys
import tempfile
import time
import uuid
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENDER = "BENCHFWD"
PER_MESSAGE = 20  # consignments per CUSCAR message: one truck's manifest

_WORDS = [
    "GLOBAL",
    "PACIFIC",
    "PEARL",
    "RIVER",
    "DELTA",
    "SHENZHEN",
    "DONGGUAN",
    "GUANGZHOU",
    "BRIGHT",
    "STAR",
    "PRECISION",
    "ELECTRONIC",
    "INDUSTRIAL",
    "TRADING",
    "LOGISTICS",
    "MANUFACTURING",
    "HOLDINGS",
    "INTERNATIONAL",
    "FOOTWEAR",
    "GARMENT",
    "TEXTILE",
    "PLASTIC",
    "HARDWARE",
    "FURNITURE",
    "COMPONENTS",
]
_CN_WORDS = ["深圳", "东莞", "广州", "光明", "电子", "科技", "制造", "国际", "贸易", "物流", "精密", "五金"]
_GOODS = [
    ("950300", "PLASTIC TOY BUILDING BLOCKS"),
    ("851713", "SMARTPHONES, 5G, WITH CHARGERS"),
    ("640399", "LEATHER FOOTWEAR; MEN'S SHOES"),
    ("940360", "WOODEN FURNITURE (FLAT-PACKED)"),
    ("847130", "PORTABLE COMPUTERS + ACCESSORIES"),
    ("611020", "COTTON KNITTED PULLOVERS 100%"),
]
_PACKAGES = [("CT", "CARTONS"), ("PK", "PACKAGES"), ("PX", "PALLETS"), ("BX", "BOXES")]


class Syntax:
    def __init__(self, una: str, identifier: str, codec: str) -> None:
        self.una = una
        self.component, self.element, self.decimal, self.release, self.reserved, self.terminator = tuple(
            una[3:9]
        )
        self.identifier = identifier
        self.codec = codec

    def escape(self, text: str) -> str:
        specials = {self.component, self.element, self.release, self.terminator}
        if self.identifier.endswith(":4") and self.reserved != " ":
            specials.add(self.reserved)
        return "".join(self.release + c if c in specials else c for c in text)

    def segment(self, tag: str, *elements: str | list[str]) -> str:
        parts = [tag]
        for e in elements:
            parts.append(
                self.component.join(self.escape(c) for c in e) if isinstance(e, list) else self.escape(e)
            )
        while parts and parts[-1] == "":
            parts.pop()
        return self.element.join(parts) + self.terminator


# Custom separators (component |, element ^, decimal comma, release !, terminator ~) under UNOC 3, and
# the syntax 4 defaults under UNOY with Chinese text.
LATIN = Syntax("UNA|^,! ~", "UNOC:3", "latin-1")
CHINESE = Syntax("UNA:+.?*'", "UNOY:4", "utf-8")


def _container(rng: random.Random) -> str:
    from gateway.identifiers import container_check_digit_ok

    while True:
        base = f"CSQU{rng.randrange(10**6):06d}"
        for digit in range(10):
            if container_check_digit_ok(base + str(digit)):
                return base + str(digit)


def _name(rng: random.Random, chinese: bool) -> str:
    if chinese:
        return "".join(rng.choice(_CN_WORDS) for _ in range(rng.randint(3, 6))) + "有限公司"
    name = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 8))) + " CO., LTD. (H.K.) + 'SONS'"
    return name[:70]


def _split(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


def cuscar(
    consignments: int, syntax: Syntax, crossing: str, seed: int, prefix: str, max_items: int = 20
) -> bytes:
    """A CUSCAR interchange of ``consignments`` consignments, ``PER_MESSAGE`` to a message."""
    rng = random.Random(seed)
    s = syntax
    chinese = s.identifier.startswith("UNOY")
    date = "20261201" if s.identifier.endswith(":4") else "261201"
    out = [
        s.una,
        s.segment(
            "UNB",
            s.identifier.split(":"),
            [SENDER, "ZZZ"],
            ["HKCUSTOMS", "ZZZ"],
            [date, "1000"],
            f"{prefix}IC1",
        ),
    ]
    messages = 0
    done = 0
    while done < consignments:
        messages += 1
        ref = f"M{messages}"
        body = [
            s.segment("UNH", ref, ["CUSCAR", "D", "96B", "UN"]),
            s.segment("BGM", "85", f"{prefix}MAN{messages:06d}", "9"),
            s.segment("DTM", ["137", "202612011000", "203"]),
            s.segment("TDT", "20", "", "3", "", "", "", "", f"AB{rng.randrange(1000, 9999)}"),
            s.segment("LOC", "41", rng.choice(["LMC", "MKT", "SBC", "HZM"])),
            s.segment("DTM", ["132", crossing, "102"]),
            s.segment("GIS", "23"),
        ]
        containers = [_container(rng) for _ in range(rng.randint(1, 2))]
        for number in containers:
            body += [s.segment("EQD", "CN", number), s.segment("SEL", f"SL{rng.randrange(10**6):06d}")]
        for seq in range(1, min(PER_MESSAGE, consignments - done) + 1):
            done += 1
            reference = f"{prefix}CMR{done:07d}"
            consignor = _name(rng, chinese)
            body += [
                s.segment("CNI", str(seq), reference),
                s.segment("RFF", ["CMR", reference]),
                s.segment("LOC", "9", "CNSZX"),
                s.segment("LOC", "11", "HKHKG"),
                s.segment("LOC", "27", "CN"),
                s.segment(
                    "NAD",
                    "CZ",
                    "",
                    "",
                    _split(consignor, 35),
                    _split(f"{rng.randint(1, 999)} INDUSTRIAL AVENUE, BAO'AN DISTRICT", 35),
                    "SHENZHEN",
                    "",
                    "518000",
                    "CN",
                ),
                s.segment(
                    "NAD",
                    "CN",
                    "",
                    "",
                    _split(_name(rng, False), 35),
                    ["2 HARBOUR ROAD, WAN CHAI"],
                    "HONG KONG",
                    "",
                    "",
                    "HK",
                ),
            ]
            for item in range(1, rng.randint(1, max_items) + 1):
                hs, text = rng.choice(_GOODS)
                package, package_text = rng.choice(_PACKAGES)
                count = rng.randint(1, 500)
                mass = f"{rng.randint(1, 9999)}{s.decimal}{rng.randint(0, 9)}"
                body += [
                    s.segment("GID", str(item), [str(count), package, "", "6", package_text]),
                    s.segment("FTX", "AAA", "", "", [text + (" 玩具" if chinese else "")]),
                    s.segment("MEA", "AAE", "G", ["KGM", mass]),
                    s.segment("MOA", ["40", f"{rng.randint(100, 99999)}{s.decimal}00", "HKD"]),
                    s.segment("SGP", rng.choice(containers), str(count)),
                    s.segment("PCI", "24", [f"{reference}/{item} 1-{count}"]),
                    s.segment("CST", "", hs),
                ]
        body.append(s.segment("UNT", str(len(body) + 1), ref))
        out += body
    out.append(s.segment("UNZ", str(messages), f"{prefix}IC1"))
    return "".join(out).encode(s.codec)


# -- measurements ------------------------------------------------------------------------------------


def pydifact_parse(files: list[Path]) -> float:
    from pydifact.parser import Parser

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            codec = "utf-8" if b"UNOY" in path.read_bytes()[:100] else "latin-1"
            for _segment in Parser().parse(path.read_bytes().decode(codec)):
                pass
    return time.perf_counter() - started


def _peak_rss_mb() -> float:
    """This process's peak resident set size. Linux's ``ru_maxrss`` survives exec: a process spawned
    by a parent holding the generated load would report the parent's size. ``VmHWM`` is this process's
    own high-water mark."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ingest_child(url: str, files: list[str], queue: Any) -> None:
    from adapters.edifact_channel import ingest
    from gateway import db, parties
    from gateway.config import Config
    from gateway.context import SYSTEM, Gateway

    engine = db.make_engine(url)
    db.upgrade(engine)
    gw = Gateway(engine, Config())
    new = parties.add_party(gw, SYSTEM, "forwarder", "Bench Forwarder", edi_ids=(SENDER,))
    actor = parties.authenticate(gw, new.api_key, "edifact")
    started = time.perf_counter()
    cpu_started = time.process_time()
    accepted = consignments = 0
    for path in files:
        with Path(path).open("rb") as source:  # streamed, as the CLI and the SFTP mailbox do
            result = ingest(gw, actor, source)
        accepted += result.accepted
        consignments += result.consignments
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    engine.dispose()
    peak_mb = _peak_rss_mb()
    # the reader processes (big files are read by a second process): their peak and CPU
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    queue.put(
        (
            elapsed,
            consignments,
            accepted,
            peak_mb,
            cpu,
            children.ru_maxrss / 1024,
            children.ru_utime + children.ru_stime,
        )
    )


def whole_ingest(url: str, files: list[Path]) -> tuple[float, int, int, float, float, float, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_ingest_child, args=(url, [str(f) for f in files], queue))
    child.start()
    result: tuple[float, int, int, float, float, float, float] = queue.get()
    child.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--consignments", type=int, default=10_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-pydifact", action="store_true", help="skip the pydifact timing (memory runs)")
    parser.add_argument("--max-items", type=int, default=20, help="goods items per consignment: 1 to this")
    parser.add_argument(
        "--reader-process",
        type=int,
        metavar="BYTES",
        default=None,
        help="read files of BYTES or more in a second process; 0: never (default: the channel's own "
        "threshold, adapters/edifact_channel.py READER_PROCESS_BYTES)",
    )
    args = parser.parse_args()
    if args.reader_process is not None:  # inherited by the spawned ingest process
        os.environ["ROADCARGO_EDIFACT_READER_BYTES"] = str(args.reader_process)

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from gateway.clock import HONG_KONG

    crossing = (datetime.now(HONG_KONG) + timedelta(days=1)).strftime("%Y%m%d")
    work = Path(tempfile.mkdtemp(prefix="roadcargo-bench-"))
    chinese_share = args.consignments // 5
    files = [work / "latin.edi", work / "unoy.edi"]
    files[0].write_bytes(cuscar(args.consignments - chinese_share, LATIN, crossing, 1, "L", args.max_items))
    files[1].write_bytes(cuscar(chinese_share, CHINESE, crossing, 2, "Y", args.max_items))
    size = sum(f.stat().st_size for f in files)
    n = args.consignments
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}")
    latin_mb, unoy_mb = (f.stat().st_size / 1e6 for f in files)
    messages = (n - chinese_share + PER_MESSAGE - 1) // PER_MESSAGE + (
        chinese_share + PER_MESSAGE - 1
    ) // PER_MESSAGE
    print(
        f"load: {n} consignments, 1 to {args.max_items} goods items each, in {messages} messages, "
        f"{size / 1e6:.1f} MB ({latin_mb:.1f} MB UNOC:3 with UNA|^,! ~; {unoy_mb:.1f} MB UNOY:4 in Chinese)"
    )

    cpu_started = time.process_time()
    parse = float("nan") if args.no_pydifact else pydifact_parse(files)
    cpu = time.process_time() - cpu_started
    print(f"pydifact parse alone:   {parse:7.2f} s  {n / parse:8.0f} consignments/s  ({cpu:.1f} s CPU)")

    rows = [("SQLite", f"sqlite:///{work / 'bench.db'}")]
    admin = None
    pg_name = f"roadcargo_bench_{uuid.uuid4().hex[:8]}"
    if not args.no_pg:
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
        rows.append(
            ("PostgreSQL", make_url(args.pg).set(database=pg_name).render_as_string(hide_password=False))
        )
    try:
        for label, url in rows:
            elapsed, consignments, accepted, peak, cpu, reader_peak, reader_cpu = whole_ingest(url, files)
            reader = (
                f"; reader process: peak RSS {reader_peak:.0f} MB, {reader_cpu:.1f} s CPU"
                if reader_cpu
                else "; read in-process"
            )
            print(
                f"whole ingest {label:10s} {elapsed:7.2f} s  {consignments / elapsed:8.0f} consignments/s  "
                f"{parse / elapsed:4.2f}x pydifact parse alone  peak RSS {peak:5.0f} MB  "
                f"({accepted}/{consignments} accepted; {cpu:.1f} s CPU of the ingest process = "
                f"{consignments / cpu:.0f} consignments per CPU-second{reader})"
            )
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
