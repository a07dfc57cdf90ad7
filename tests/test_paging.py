"""The paging pieces against hand-built lists: what a page proves, coverage arithmetic, walks
that meet, seeking by time and the count check — no HTTP, no database."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from etl.audit import Audit
from etl.client import Page
from etl.coverage import TICK, Gap, Interval, chain_interval, gaps, merge
from etl.errors import ListingError
from etl.seek import Seeker
from etl.sheets import Sheet, follows, page_number
from etl.walks import Reader, Walk

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Listing:
    """A provider's list in memory: (call_uuid, start second), served newest first."""

    def __init__(self, seconds: list[int]) -> None:
        self.calls = [(f"c{i:06d}", s) for i, s in enumerate(seconds)]
        self.calls.sort(key=lambda c: (c[1], c[0]), reverse=True)
        self.requests = 0
        self.before_answer: Callable[[Listing], None] | None = None
        self.serial = len(self.calls)

    def add(self, second: int) -> str:
        uuid = f"n{self.serial:06d}"
        self.serial += 1
        self.calls.append((uuid, second))
        self.calls.sort(key=lambda c: (c[1], c[0]), reverse=True)
        return uuid

    def remove(self, uuid: str) -> None:
        self.calls = [c for c in self.calls if c[0] != uuid]

    def fetch(self, number: int, per_page: int) -> Page:
        self.requests += 1
        if self.before_answer is not None:
            self.before_answer(self)
        chunk = self.calls[(number - 1) * per_page: number * per_page]
        records = [{"call_uuid": u, "start_time": at(s).isoformat()} for u, s in chunk]
        return Page(number, per_page, len(self.calls), records)


def sheet(listing: Listing, number: int, per_page: int = 10, answered: int = 1) -> Sheet:
    return Sheet.read(listing.fetch(number, per_page), "MA1", answered)


class Stored:
    """The warehouse's count of stored calls, over a set of (uuid, second)."""

    def __init__(self, calls: list[tuple[str, int]]) -> None:
        self.calls = dict(calls)

    def count_since(self, moment: datetime, until: datetime | None = None) -> int:
        return sum(1 for s in self.calls.values()
                   if at(s) >= moment and (until is None or at(s) < until))


# -- what a page proves ------------------------------------------------------------------------

def test_a_page_not_sorted_newest_first_is_refused():
    page = Page(1, 10, 2, [{"call_uuid": "a", "start_time": at(1).isoformat()},
                             {"call_uuid": "b", "start_time": at(2).isoformat()}])
    with pytest.raises(ListingError, match="not sorted"):
        Sheet.read(page, "MA1", 1)


def test_boundaries_count_exactly_the_calls_that_started_after_a_second_inside_the_page():
    listing = Listing([100, 100, 99, 98, 98, 98, 97, 50, 40, 30, 20, 10])
    second = sheet(listing, 2, per_page=5)  # ranks 5..9: 98, 97, 50, 40, 30

    assert second.boundaries() == [(at(97), 6), (at(50), 7), (at(40), 8), (at(30), 9)]
    for moment, count in second.boundaries():
        assert count == sum(1 for _, s in listing.calls if at(s) > moment)


def test_pages_overlap_when_they_share_a_call_or_their_time_ranges_cross():
    listing = Listing(list(range(100, 0, -1)))
    a, b = sheet(listing, 1), sheet(listing, 2)
    assert not a.overlaps(b)  # neighbours that only touch prove nothing by themselves
    listing.add(1000)
    assert sheet(listing, 2).overlaps(a)  # one arrival: page 2 now holds page 1's last call


def test_the_page_after_follows_when_asked_for_later():
    listing = Listing(list(range(100, 0, -1)))
    first, second = sheet(listing, 1, answered=1), sheet(listing, 2, answered=2)
    assert follows(first, second)
    assert not follows(second, sheet(listing, 3, answered=1))  # answered before: no proof


def test_the_last_page_ends_the_list_even_when_it_is_full():
    listing = Listing(list(range(20, 0, -1)))
    assert sheet(listing, 2).is_end and not sheet(listing, 1).is_end
    assert sheet(listing, 3).is_end and not sheet(listing, 3).calls


def test_page_number_of_a_rank():
    assert [page_number(r, 100) for r in (0, 99, 100, 250)] == [1, 1, 2, 3]


# -- coverage ----------------------------------------------------------------------------------

def test_intervals_that_overlap_merge_and_those_that_only_touch_do_not():
    a, b, c = Interval(at(0), at(10)), Interval(at(5), at(20)), Interval(at(20), at(30))
    assert merge([a, b, c]) == [Interval(at(20), at(30)), Interval(at(0), at(20))]


def test_a_chain_from_the_head_covers_its_newest_second_and_one_to_the_end_its_oldest():
    listing = Listing(list(range(15, 0, -1)))
    head, last = sheet(listing, 1), sheet(listing, 2)
    interval = chain_interval(head, last, head=True)
    assert interval == Interval(at(1) - TICK, at(15) + TICK)


def test_gaps_read_the_head_into_the_newest_interval_and_every_hole_below():
    covered = [Interval(at(100), at(200)), Interval(at(10), at(50))]

    todo = gaps(covered, lookback=timedelta(seconds=20), floor=at(0))

    assert todo == [Gap(None, at(180)), Gap(at(100), at(50)), Gap(at(10), at(0))]
    assert gaps(covered, lookback=timedelta(0), floor=at(20)) == [Gap(None, at(200)),
                                                                  Gap(at(100), at(50))]
    assert gaps([], lookback=timedelta(0), floor=None) == [Gap(None, None)]


# -- walks -------------------------------------------------------------------------------------

def _walk_all(listing: Listing, walks: int, per_page: int = 10) -> tuple[set[str], Reader, list[Walk]]:
    reader = Reader(listing.fetch, "MA1", per_page=per_page)
    head = reader.read(1)
    last = page_number(head.total_count - 1, per_page)
    firsts = [2 + i * (last - 1) // walks for i in range(walks)]
    chain = [Walk(f, lambda s: False) for f in firsts]
    chain[0].above = head
    for upper, lower in itertools.pairwise(chain):
        upper.joins = lower
    seen = set(head.uuids)
    for _walk, page in reader.walk(chain):
        seen |= page.uuids
    assert all(w.done for w in chain)
    return seen, reader, chain


def test_walks_cover_a_still_list_with_one_extra_page_where_two_meet():
    listing = Listing(list(range(1000, 0, -1)))

    seen, _reader, chain = _walk_all(listing, walks=4)

    assert seen == {u for u, _ in listing.calls}
    assert listing.requests == 100 + 3
    assert all(w.met for w in chain[:-1])


def test_walks_keep_every_call_present_throughout_while_calls_arrive_and_age_out():
    listing = Listing(list(range(1000, 0, -1)))
    before = {u for u, _ in listing.calls}
    clock = iter(range(2000, 10_000))

    def churn(lst: Listing) -> None:
        lst.add(next(clock))
        lst.add(next(clock))
        lst.calls.pop()  # the oldest call leaves the window

    listing.before_answer = churn
    seen, _, _ = _walk_all(listing, walks=4)

    throughout = before & {u for u, _ in listing.calls}
    assert throughout - seen == set()


# -- seeking -----------------------------------------------------------------------------------

def test_seeking_a_second_finds_the_page_that_straddles_it_in_about_log2_pages():
    listing = Listing(list(range(100_000, 0, -10)))  # 10,000 calls, 1,000 pages of 10
    reader = Reader(listing.fetch, "MA1", per_page=10)
    head = reader.read(1)
    seeker = Seeker(reader)

    found = seeker.page_at(at(33_335), head)

    assert found.newest >= at(33_335) > found.oldest
    assert seeker.probes <= 12


def test_seeking_with_the_warehouses_estimate_takes_one_request():
    listing = Listing(list(range(100_000, 0, -10)))
    stored = Stored(listing.calls)
    reader = Reader(listing.fetch, "MA1", per_page=10)
    head = reader.read(1)
    seeker = Seeker(reader, stored.count_since)

    found = seeker.page_at(at(33_335), head)

    assert found.newest >= at(33_335) > found.oldest
    assert seeker.probes == 1


# -- the count check ---------------------------------------------------------------------------

def _audit(listing: Listing, stored: Stored) -> tuple[Audit, list[Sheet]]:
    reader = Reader(listing.fetch, "MA1", per_page=10)
    head = reader.read(1)
    tail = reader.read(page_number(head.total_count - 1, 10))
    audit = Audit(reader, stored, head, tail)  # type: ignore[arg-type]
    pages = []
    for page in audit.run(set(head.uuids)):
        pages.append(page)
        stored.calls.update((c.call_uuid, int((c.start_time - T0).total_seconds()))
                            for c in page.calls)
    return audit, pages


def test_the_count_check_finds_a_call_listed_late_in_about_log2_pages():
    listing = Listing(list(range(20_000, 0, -10)))  # 2,000 calls, 200 pages
    stored = Stored(listing.calls)
    late = listing.add(7_777)

    audit, pages = _audit(listing, stored)

    assert audit.found and any(late in p.uuids for p in pages)
    assert late in stored.calls
    assert audit.probes <= 2 + 8 + 2


def test_the_count_check_reads_the_page_where_a_stored_call_is_gone():
    listing = Listing(list(range(20_000, 0, -10)))
    stored = Stored(listing.calls)
    gone = listing.calls[1234][0]
    listing.remove(gone)

    audit, pages = _audit(listing, stored)

    assert audit.found
    assert any(p.oldest < at(stored.calls[gone]) < p.newest for p in pages)


def test_the_count_check_is_silent_when_the_warehouse_holds_the_list():
    listing = Listing(list(range(20_000, 0, -10)))
    audit, pages = _audit(listing, Stored(listing.calls))
    assert not audit.found and pages == []
