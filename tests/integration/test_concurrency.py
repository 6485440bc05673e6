"""Idempotency and uniqueness under concurrency, on SQLite and PostgreSQL."""

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from gateway import consignments, tables
from tests.factories import record

THREADS = 8


def run_at_once(fn, n=THREADS):
    barrier = threading.Barrier(n)

    def task(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(task, range(n)))


def test_same_reference_from_many_threads_gets_exactly_one_ccrn(gw, party):
    actor, _ = party.add()
    outcomes = run_at_once(lambda _i: consignments.lodge(gw, actor, record()))
    assert len({o.view["ccrn"] for o in outcomes}) == 1
    assert sum(o.changed for o in outcomes) == 1
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.consignments)) == 1


def test_same_reference_in_concurrent_batches_gets_one_ccrn(gw, party):
    actor, _ = party.add()

    def batch(i):
        subs = [consignments.Submission("lodge", record(submitter_reference=f"R{n}")) for n in range(20)]
        subs.append(consignments.Submission("lodge", record(submitter_reference=f"OWN{i}")))
        return consignments.submit(gw, actor, subs)

    results = run_at_once(batch, 4)
    for n in range(20):
        assert len({r[n].view["ccrn"] for r in results}) == 1
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.consignments)) == 24


def test_concurrent_lodges_of_different_references_all_get_distinct_ccrns(gw, party):
    actor, _ = party.add()
    outcomes = run_at_once(lambda i: consignments.lodge(gw, actor, record(submitter_reference=f"REF{i}")))
    assert len({o.view["ccrn"] for o in outcomes}) == THREADS


def test_reading_a_consignment_while_the_sweep_expires_it_expires_it_once(gw, party, clock):
    from datetime import timedelta

    actor, _ = party.add()
    ccrns = [
        consignments.lodge(gw, actor, record(submitter_reference=f"X{i}")).view["ccrn"] for i in range(20)
    ]
    clock.advance(timedelta(days=gw.config.rules.consignment_expiry_days + 2))

    def work(i):
        if i == 0:
            return consignments.expire_due(gw)
        return [consignments.get(gw, actor, c)["status"] for c in ccrns]

    run_at_once(work, n=3)
    with gw.engine.connect() as conn:
        events = conn.execute(
            select(tables.events.c.ccrn, func.count())
            .where(tables.events.c.type == "EXPIRED")
            .group_by(tables.events.c.ccrn)
        ).all()
    assert sorted(c for c, _n in events) == sorted(ccrns)
    assert all(n == 1 for _c, n in events), events
