"""The plan read ahead of the loader (etl.runner._ReadAhead): requests go on while the loader
writes, a flush is still a barrier, errors cross to the loader's thread, leaving stops the plan.

These drive the class with plain generators and events; nothing here depends on timing beyond
a generous bound on waits that must end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from etl.plans import Batch
from etl.runner import _ReadAhead


def test_the_plan_runs_ahead_while_the_loader_is_busy():
    produced: list[int] = []
    three_read = threading.Event()

    def plan() -> Iterator[Batch]:
        for i in range(5):
            produced.append(i)
            if i == 3:
                three_read.set()
            yield Batch(pages=1)

    with _ReadAhead(plan(), 8, name="test") as batches:
        first = next(batches)
        # The loader holds its first batch (a commit in progress); the plan has gone on.
        assert three_read.wait(10)
        assert first.pages == 1
        assert len(list(batches)) == 4
    assert produced == [0, 1, 2, 3, 4]


def test_no_more_than_depth_batches_wait_for_the_loader():
    produced: list[int] = []
    blocked = threading.Event()

    def plan() -> Iterator[Batch]:
        for i in range(100):
            produced.append(i)
            if i == 3:
                blocked.set()
            yield Batch(pages=1)

    with _ReadAhead(plan(), 2, name="test") as batches:
        next(batches)
        assert blocked.wait(10)
        # One handed out, two queued, one more produced and waiting for room: no further.
        threading.Event().wait(0.2)
        assert len(produced) <= 4
        assert len(list(batches)) == 99


def test_a_flush_holds_the_plan_until_the_loader_asks_for_more():
    after_flush = threading.Event()

    def plan() -> Iterator[Batch]:
        yield Batch(pages=1)
        yield Batch(flush=True)
        after_flush.set()  # the plan reads the warehouse here: everything must be committed
        yield Batch(pages=1)

    with _ReadAhead(plan(), 8, name="test") as batches:
        assert next(batches).pages == 1
        assert next(batches).flush
        assert not after_flush.wait(0.3)  # the loader is still committing
        assert next(batches).pages == 1  # asking for the next batch says it is committed
        assert after_flush.is_set()


def test_an_error_of_the_plan_is_raised_in_the_loaders_thread():
    class Boom(Exception):
        pass

    def plan() -> Iterator[Batch]:
        yield Batch(pages=1)
        raise Boom("the list broke")

    with _ReadAhead(plan(), 8, name="test") as batches:
        assert next(batches).pages == 1
        with pytest.raises(Boom, match="the list broke"):
            next(batches)


def test_leaving_early_closes_the_plan_in_its_own_thread():
    closed_in: list[str] = []

    def plan() -> Iterator[Batch]:
        try:
            while True:
                yield Batch(pages=1)
        finally:
            closed_in.append(threading.current_thread().name)

    with pytest.raises(RuntimeError, match="database down"), \
            _ReadAhead(plan(), 4, name="read-acct") as batches:
        next(batches)
        raise RuntimeError("database down")
    assert closed_in == ["read-acct"]
