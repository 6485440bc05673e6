"""The long-lived processes' heap: keep Python's cyclic garbage collector off what lives for good.

A full ("generation 2") collection walks every object the process holds. `roadcargo serve` holds about
160,000 from its start (the routers, SQLAlchemy's compiled statements, the EDIFACT directory, the XML
schemas, zeep's WSDL), so each full collection stopped every thread for about 100 ms under load: four
times in fifteen seconds of bundling at 300/s, and each one a spike in the p99 of every request queued
behind it. Once they are loaded, these objects live as long as the process; ``settle`` moves them to
the permanent generation, which collections skip, and leaves the collector to do its work on what the
requests create (bench/RESULTS.md has the before and after).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what is garbage now, then take everything still alive out of later collections. Call it
    once a process has loaded what it keeps (at start, and after a late load such as a WSDL); the
    objects settled are still freed as usual when nothing refers to them any more."""
    gc.collect()
    gc.freeze()
