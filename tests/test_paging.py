"""The Paginator against an in-memory list that serves pages exactly like the Vox API (no HTTP).

Positions ("seq") count from the oldest call, which is 0; in the fake list a call's index is
its position, and its uuid ends with that number.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from etl.client import Page
from etl.errors import ListingError
from etl.paging import Batch, Coverage, Mark, Paginator, Positions, PositionsStale
from etl.records import CallRow

BASE = datetime(2025, 1, 1, tzinfo=UTC)
ACCOUNT = "MA123456"


class RunawayPaging(AssertionError):
    """Raised by the fake when the paginator keeps reading long after it should have stopped."""


def make_call(seq: int, start_time: datetime) -> dict:
    return {
        "call_uuid": f"call-{seq:07d}",
        "from": "+14155551234",
        "to": "+14155556789",
        "direction": "outbound",
        "status": "completed",
        "duration": 30,
        "start_time": start_time.isoformat().replace("+00:00", "Z"),
        "answer_time": None,
        "end_time": None,
        "end_reason": "caller-hangup",
    }


def seq_of(uuid: str) -> int:
    return int(uuid.rsplit("-", 1)[1])


class FakeList:
    """An account's call list, oldest first, served newest first the way the API pages it.

    `drift(request_number)` says how many new calls arrive at the head after each fetch; they
    start one second apart after the newest call. Records are built when served, so a list
    that grows by thousands of calls per request stays cheap.
    """

    def __init__(
        self,
        times: list[datetime],
        *,
        cap: int = 100,
        drift: int | Callable[[int], int] = 0,
        max_requests: int = 2_000,
    ) -> None:
        self.times = list(times)  # the calls that existed at the start
        self.count = len(times)
        self.cap = cap
        self.drift = drift if callable(drift) else (lambda _n, k=drift: k)
        self.max_requests = max_requests
        self.requests = 0
        self.appended = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, count: int, *, step: timedelta = timedelta(seconds=10), **kw) -> FakeList:
        return cls([BASE + i * step for i in range(count)], **kw)

    def time(self, seq: int) -> datetime:
        if seq < len(self.times):
            return self.times[seq]
        return (self.times[-1] if self.times else BASE) + timedelta(seconds=seq - len(self.times) + 1)

    def call(self, seq: int) -> dict:
        return make_call(seq, self.time(seq))

    def uuids(self, count: int | None = None) -> list[str]:
        return [f"call-{seq:07d}" for seq in range(self.count if count is None else count)]

    def fetch(self, number: int, per_page: int) -> Page:
        with self._lock:
            self.requests += 1
            if self.requests > self.max_requests:
                raise RunawayPaging(f"still paging after {self.max_requests} requests")
            size = min(per_page, self.cap)
            total = self.count
            top = total - (number - 1) * size  # one past the position of the page's newest call
            records = [self.call(seq) for seq in range(top - 1, max(top - size, 0) - 1, -1)]
            page = Page(number, size, total, math.ceil(total / size), records)
            added = self.drift(self.requests)
            self.count += added
            self.appended += added
            return page


def read_everything(
    api: FakeList, *, concurrency: int = 1, per_page: int = 100
) -> tuple[Paginator, list[Batch], int]:
    """What a full sync does: read the head, then cover every position that existed then."""
    with ThreadPoolExecutor(concurrency) as executor:
        pager = Paginator(
            api.fetch, ACCOUNT, per_page=per_page, concurrency=concurrency,
            executor=executor if concurrency > 1 else None,
        )
        head = pager.head()
        batches = list(pager.cover(Coverage([(0, head.total_count)]), first=head, frontier_from=0))
    return pager, batches, head.total_count


def yielded_uuids(batches: list[Batch]) -> list[str]:
    return [row.call_uuid for batch in batches for row in batch.rows]


# -- Coverage ----------------------------------------------------------------------------------


def test_coverage_merges_overlapping_and_adjacent_intervals():
    cov = Coverage()
    cov.add(10, 20)
    cov.add(30, 40)
    assert list(cov) == [(10, 20), (30, 40)]
    cov.add(20, 25)  # adjacent to the first
    assert list(cov) == [(10, 25), (30, 40)]
    cov.add(24, 31)  # bridges both
    assert list(cov) == [(10, 40)]
    cov.add(0, 5)
    cov.add(50, 60)
    assert list(cov) == [(0, 5), (10, 40), (50, 60)]
    cov.add(3, 55)  # swallows everything in between
    assert list(cov) == [(0, 60)]


def test_coverage_ignores_empty_intervals():
    cov = Coverage([(5, 5), (7, 3)])
    assert not cov
    assert list(cov) == []


def test_coverage_built_from_unsorted_intervals_is_sorted_and_disjoint():
    cov = Coverage([(50, 60), (0, 10), (5, 20), (40, 50)])
    assert list(cov) == [(0, 20), (40, 60)]


def test_coverage_contains_is_half_open():
    cov = Coverage([(10, 20)])
    assert not cov.contains(9)
    assert cov.contains(10)
    assert cov.contains(19)
    assert not cov.contains(20)


def test_coverage_next_missing_skips_the_interval_holding_the_position():
    cov = Coverage([(0, 10), (20, 30)])
    assert cov.next_missing(0) == 10
    assert cov.next_missing(5) == 10
    assert cov.next_missing(10) == 10
    assert cov.next_missing(15) == 15
    assert cov.next_missing(20) == 30
    assert cov.next_missing(35) == 35
    assert Coverage().next_missing(7) == 7


def test_coverage_first_gap_is_the_lowest_needed_position_not_covered():
    done = Coverage([(0, 10), (20, 30)])
    assert done.first_gap(Coverage([(0, 40)])) == 10
    assert done.first_gap(Coverage([(0, 10), (20, 25)])) is None
    assert done.first_gap(Coverage([(5, 8), (25, 35)])) == 30
    assert done.first_gap(Coverage([(12, 15)])) == 12
    assert done.first_gap(Coverage()) is None
    assert Coverage().first_gap(Coverage([(3, 4)])) == 3


# -- covering the list --------------------------------------------------------------------------


def test_page_positions_count_from_the_oldest_call():
    api = FakeList.of(250)
    first, last = api.fetch(1, 100), api.fetch(3, 100)
    assert (first.top_seq, first.low_seq) == (249, 150)
    assert (last.top_seq, last.low_seq) == (49, 0)
    assert seq_of(first.records[0]["call_uuid"]) == first.seq_of(0) == 249
    assert seq_of(last.records[-1]["call_uuid"]) == last.seq_of(49) == 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_covering_the_whole_list_reads_every_call_exactly_once(concurrency):
    api = FakeList.of(1_050)
    pager, batches, total = read_everything(api, concurrency=concurrency)
    uuids = yielded_uuids(batches)
    assert total == 1_050
    assert Counter(uuids) == Counter(api.uuids())
    assert api.requests == pager.pages_read == 11  # each page once, the head included
    assert all(isinstance(row, CallRow) and row.account_id == ACCOUNT
               for batch in batches for row in batch.rows)
    assert batches[-1].frontier == 1_050


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("drift", [1, 7, 25, 30])
def test_sync_keeps_calls_that_arrive_while_paging(concurrency, drift):
    api = FakeList.of(1_234, drift=drift)
    _, batches, total = read_everything(api, concurrency=concurrency)
    uuids = yielded_uuids(batches)
    assert total == 1_234
    assert set(api.uuids(total)) <= set(uuids), "a call that existed at the start was missed"
    assert len(uuids) == len(set(uuids)), "a position was yielded twice in one pass"
    if drift >= 30:
        assert api.appended > 100, "the scenario should drift by more than one page"


def test_sync_keeps_every_call_when_the_drift_varies_from_request_to_request():
    pattern = [0, 150, 3, 0, 42, 250, 1, 0, 77]
    api = FakeList.of(2_000, drift=lambda n: pattern[n % len(pattern)])
    _, batches, total = read_everything(api, concurrency=4)
    uuids = yielded_uuids(batches)
    assert set(api.uuids(total)) <= set(uuids)
    assert len(uuids) == len(set(uuids))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_server_capping_per_page_is_followed_without_losing_calls(concurrency):
    api = FakeList.of(1_020, cap=50)
    pager, batches, _ = read_everything(api, concurrency=concurrency, per_page=100)
    uuids = yielded_uuids(batches)
    assert Counter(uuids) == Counter(api.uuids())
    assert pager.per_page == 50
    assert api.requests == math.ceil(1_020 / 50)


def test_server_capping_per_page_under_drift_still_reads_every_call():
    api = FakeList.of(700, cap=50, drift=13)
    _, batches, total = read_everything(api, concurrency=4, per_page=100)
    uuids = yielded_uuids(batches)
    assert set(api.uuids(total)) <= set(uuids)
    assert len(uuids) == len(set(uuids))


def test_empty_account_costs_one_request():
    api = FakeList.of(0)
    _pager, batches, total = read_everything(api)
    assert total == 0
    assert yielded_uuids(batches) == []
    assert api.requests == 1


def test_a_list_of_exactly_one_page_costs_one_request():
    api = FakeList.of(100)
    _, batches, _ = read_everything(api)
    assert Counter(yielded_uuids(batches)) == Counter(api.uuids())
    assert api.requests == 1


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("drift", [0, 17])
def test_frontier_never_passes_a_position_not_yet_yielded(drift, concurrency):
    api = FakeList.of(1_500, drift=drift)
    executor = ThreadPoolExecutor(concurrency)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100, concurrency=concurrency, executor=executor)
    head = pager.head()
    seen: set[int] = set()
    frontiers = []
    batches = pager.cover(Coverage([(0, head.total_count)]), first=head, frontier_from=0)
    for batch in batches:
        seen.update(seq_of(row.call_uuid) for row in batch.rows)
        lowest_unseen = next(seq for seq in range(api.count + 1) if seq not in seen)
        assert batch.frontier is not None
        assert batch.frontier <= lowest_unseen
        frontiers.append(batch.frontier)
        if batch.frontier > 0:
            # the watermark is the newest start_time below the frontier, never beyond it
            assert batch.watermark == api.time(batch.frontier - 1)
        else:
            assert batch.watermark is None
    executor.shutdown()
    assert frontiers == sorted(frontiers), "the frontier never moves back"
    assert frontiers[-1] >= head.total_count


def test_frontier_counts_from_frontier_from():
    api = FakeList.of(500)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    head = pager.head()
    batches = list(pager.cover(Coverage([(200, 500)]), first=head, frontier_from=200))
    seqs = {seq_of(u) for u in yielded_uuids(batches)}
    assert set(range(200, 500)) <= seqs
    assert batches[-1].frontier == 500
    assert all(b.frontier is not None and b.frontier >= 200 for b in batches)


def test_covering_a_range_reads_only_the_pages_that_hold_it():
    api = FakeList.of(1_000)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    pager.head()
    before = api.requests
    batches = list(pager.cover(Coverage([(450, 550)])))
    seqs = {seq_of(u) for u in yielded_uuids(batches)}
    assert set(range(450, 550)) <= seqs
    assert api.requests - before == 2


# -- broken or runaway listings -----------------------------------------------------------------


def test_page_shorter_than_its_pagination_says_raises_listing_error():
    api = FakeList.of(250)

    def fetch(number: int, per_page: int) -> Page:
        page = api.fetch(number, per_page)
        return Page(page.number, page.per_page, page.total_count, page.total_pages, page.records[:-1])

    pager = Paginator(fetch, ACCOUNT)
    with pytest.raises(ListingError, match="page 1"):
        pager.head()


def test_last_page_longer_than_its_pagination_says_raises_listing_error():
    api = FakeList.of(250)

    def fetch(number: int, per_page: int) -> Page:
        page = api.fetch(number, per_page)
        if number == 3:  # should hold 50 calls, holds 60
            return Page(3, page.per_page, page.total_count, page.total_pages,
                        page.records + [api.call(seq) for seq in range(10)])
        return page

    pager = Paginator(fetch, ACCOUNT)
    head = pager.head()
    with pytest.raises(ListingError, match="page 3"):
        list(pager.cover(Coverage([(0, head.total_count)]), first=head))


def test_list_jumping_ten_pages_on_every_request_raises_listing_error_instead_of_looping():
    api = FakeList.of(500, drift=1_000, max_requests=100)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    head = pager.head()
    with pytest.raises(ListingError, match="faster than it could be read"):
        list(pager.cover(Coverage([(0, head.total_count)]), first=head))
    assert api.requests < 50


@pytest.mark.parametrize("concurrency", [1, 4])
def test_list_jumping_further_on_every_request_ends_instead_of_looping(concurrency):
    # Each request lands where the list has run further than the one before. Reading new
    # positions is no progress toward the needed ones: the paginator either still covers them
    # (it aims where the list will be) or gives up with ListingError, within a bounded budget.
    api = FakeList.of(500, drift=lambda n: 1_000 + 100 * n, max_requests=100)
    with ThreadPoolExecutor(concurrency) as executor:
        pager = Paginator(api.fetch, ACCOUNT, per_page=100, concurrency=concurrency,
                          executor=executor)
        head = pager.head()
        try:
            batches = list(pager.cover(Coverage([(0, head.total_count)]), first=head))
        except ListingError:
            return
    seen = {row.call_uuid for batch in batches for row in batch.rows}
    assert {api.call(seq)["call_uuid"] for seq in range(500)} <= seen


# -- seek -----------------------------------------------------------------------------------------


def _bursty_times(count: int) -> list[datetime]:
    """Start times in bursts: dense clusters separated by long quiet spells."""
    times, moment = [], BASE
    for i in range(count):
        moment += timedelta(seconds=1 if i % 500 else 86_400 * (1 + i % 7))
        times.append(moment)
    return times


def _assert_brackets(times: list[datetime], moment: datetime, low: int, high: int,
                     per_page: int) -> None:
    target = bisect.bisect_left(times, moment)  # first position starting at or after moment
    assert low < target <= high, (low, target, high)
    assert high - low - 1 <= per_page
    if low >= 0:
        assert times[low] < moment
    if high < len(times):
        assert times[high] >= moment


@pytest.mark.parametrize("shape", ["uniform", "bursty"])
@pytest.mark.parametrize("where", [-1.0, 0.0, 0.001, 0.37, 0.5, 0.999, 1.0, 2.0])
def test_seek_brackets_a_moment_with_about_log2_pages_requests(shape, where):
    count = 30_000  # 300 pages
    times = ([BASE + timedelta(seconds=10 * i) for i in range(count)] if shape == "uniform"
             else _bursty_times(count))
    api = FakeList(times)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    pager.head()
    if where < 0:
        moment = times[0] - timedelta(days=1)
    elif where > 1:
        moment = times[-1] + timedelta(days=1)
    else:
        moment = times[min(count - 1, int(where * count))] + timedelta(microseconds=1)
    before = api.requests
    low, high = pager.seek(moment)
    _assert_brackets(times, moment, low, high, per_page=100)
    assert api.requests - before <= math.ceil(math.log2(300)) + 1


def test_seek_finds_the_first_of_calls_sharing_a_start_time():
    times = [BASE + timedelta(seconds=i // 250) for i in range(5_000)]  # 250 calls per second
    api = FakeList(times)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    pager.head()
    moment = BASE + timedelta(seconds=7)
    low, high = pager.seek(moment)
    _assert_brackets(times, moment, low, high, per_page=100)


def test_seek_costs_no_request_when_stored_marks_already_bracket_the_moment():
    api = FakeList.of(30_000)
    marks = [Mark(seq, api.times[seq], f"call-{seq:07d}") for seq in (0, 10_000, 10_050, 29_999)]
    pager = Paginator(api.fetch, ACCOUNT, per_page=100, positions=Positions(marks))
    pager.head()
    before = api.requests
    moment = api.times[10_020] + timedelta(seconds=1)
    low, high = pager.seek(moment)
    assert api.requests == before
    assert (low, high) == (10_000, 10_050)
    _assert_brackets(api.times, moment, low, high, per_page=100)


def test_seek_uses_marks_to_narrow_before_bisecting():
    api = FakeList.of(30_000)
    marks = [Mark(seq, api.times[seq], f"call-{seq:07d}") for seq in (12_000, 12_800)]
    pager = Paginator(api.fetch, ACCOUNT, per_page=100, positions=Positions(marks))
    pager.head()
    before = api.requests
    moment = api.times[12_345]
    low, high = pager.seek(moment)
    _assert_brackets(api.times, moment, low, high, per_page=100)
    assert api.requests - before <= math.ceil(math.log2(8)) + 1


def test_pages_read_by_seek_are_not_read_again_by_cover():
    api = FakeList.of(3_000)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    head = pager.head()
    low, _ = pager.seek(api.times[1_234])
    after_seek = api.requests
    batches = list(pager.cover(Coverage([(low + 1, head.total_count)]), first=head))
    seqs = [seq_of(u) for u in yielded_uuids(batches)]
    assert set(range(low + 1, 3_000)) <= set(seqs)
    assert len(seqs) == len(set(seqs))
    pages_needed = math.ceil((3_000 - (low + 1)) / 100)
    assert api.requests - after_seek <= pages_needed - 1  # the head and seek's pages are reused


# -- stored positions ---------------------------------------------------------------------------


def test_stored_mark_that_disagrees_with_the_listing_raises_positions_stale():
    api = FakeList.of(250)
    stale = Mark(200, api.times[200], "call-removed-since")
    pager = Paginator(api.fetch, ACCOUNT, per_page=100, positions=Positions([stale]))
    head = pager.head()
    with pytest.raises(PositionsStale, match="call-removed-since"):
        list(pager.cover(Coverage([(0, head.total_count)]), first=head))


def test_stored_mark_that_agrees_with_the_listing_is_accepted():
    api = FakeList.of(250)
    good = Mark(200, api.times[200], "call-0000200")
    pager = Paginator(api.fetch, ACCOUNT, per_page=100, positions=Positions([good]))
    head = pager.head()
    batches = list(pager.cover(Coverage([(0, head.total_count)]), first=head))
    assert Counter(yielded_uuids(batches)) == Counter(api.uuids())


def test_positions_stale_is_a_listing_error():
    assert issubclass(PositionsStale, ListingError)


def test_cover_reports_new_marks_once_for_the_caller_to_store():
    api = FakeList.of(450)
    pager = Paginator(api.fetch, ACCOUNT, per_page=100)
    head = pager.head()
    batches = list(pager.cover(Coverage([(0, head.total_count)]), first=head))
    marks = [m for b in batches for m in b.marks]
    assert marks, "page edges are remembered as marks"
    assert len({m.seq for m in marks}) == len(marks)
    for mark in marks:
        assert mark.call_uuid == f"call-{mark.seq:07d}"
        assert mark.start_time == api.time(mark.seq)
