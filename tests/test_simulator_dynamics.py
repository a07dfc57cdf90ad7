"""The simulator's list changes at both ends, like a real provider's, and every page stays a
contiguous slice of one consistent order. Exercised over real sockets with requests."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from etl.simulator import Simulator


class Pages:
    """Reads pages of one account over HTTP."""

    def __init__(self, sim: Simulator, i: int = 0) -> None:
        account = sim.accounts[i]
        self.url = f"{sim.base_url}/voice/accounts/{account.auth_id}/calls"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {account.token}"

    def get(self, page: int = 1, per_page: int = 100, **params: Any) -> dict[str, Any]:
        r = self.session.get(self.url, params={"page": page, "per_page": per_page, **params},
                             timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def uuids(self, page: int = 1, per_page: int = 100, **params: Any) -> list[str]:
        return [c["call_uuid"] for c in self.get(page, per_page, **params)["calls"]]


def starts(calls: list[dict[str, Any]]) -> list[str]:
    return [c["start_time"] for c in calls]


def assert_sorted(calls: list[dict[str, Any]]) -> None:
    s = starts(calls)
    assert s == sorted(s, reverse=True)


def ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(accounts=1, calls=300, seed=5, open_fraction=0.0) as s:
        yield s


def auth(sim: Simulator) -> str:
    return sim.accounts[0].auth_id


# --- the order ---------------------------------------------------------------------------------


def test_ties_in_one_second_put_the_later_listing_first_and_never_move(sim: Simulator) -> None:
    a = auth(sim)
    head_before = sim.calls(a)[0]
    tied = sim.add_calls(a, 5, same_second=True)
    assert {c["start_time"] for c in tied} == {head_before["start_time"]}
    listed = sim.calls(a)
    assert [c["call_uuid"] for c in listed[:6]] == [
        *(c["call_uuid"] for c in reversed(tied)), head_before["call_uuid"]
    ]
    # Reading again, and after a delete and restore inside the tie, gives the same order.
    victim = tied[2]["call_uuid"]
    sim.delete_call(a, victim)
    assert victim not in Pages(sim).uuids(per_page=10)
    sim.restore_call(a, victim)
    assert Pages(sim).uuids(per_page=6) == [c["call_uuid"] for c in listed[:6]]


def test_a_burst_larger_than_a_page_is_split_consistently_across_pages() -> None:
    with Simulator(accounts=1, calls=3000, seed=8, burst_every=1000, burst_calls=250) as sim:
        a = auth(sim)
        listed = sim.calls(a)
        sizes = Counter(starts(listed))
        assert sorted(sizes.values())[-3:] == [250, 250, 250]
        pages = Pages(sim)
        served = [c for p in range(1, 32) for c in pages.get(p, per_page=100)["calls"]]
        assert served == listed
        assert_sorted(served)
        # Same order on a second read, and with a smaller page.
        again = [u for p in range(1, 65) for u in pages.uuids(p, per_page=47)]
        assert again == [c["call_uuid"] for c in listed]


def test_a_day_of_arrivals_after_the_clock_moves_a_day(sim: Simulator) -> None:
    a = auth(sim)
    before = sim.calls(a)
    sim.advance_clock(86400)
    added = sim.add_calls(a, 500, spread_s=86400)
    assert starts(added) == sorted(starts(added))
    assert before[0]["start_time"] <= added[0]["start_time"]
    assert added[-1]["start_time"] <= ts(sim.clock())
    assert len(set(starts(added))) > 400  # spread out, not a burst
    listed = sim.calls(a)
    assert listed == [*reversed(added), *before]
    assert_sorted(listed)
    with pytest.raises(ValueError):
        sim.add_calls(a, 1, same_second=True, spread_s=60)


def test_drift_arrives_in_bursts_sharing_one_second() -> None:
    with Simulator(accounts=1, calls=50, seed=9, drift_rate=2000, burst_size=40) as sim:
        a = auth(sim)
        deadline = time.monotonic() + 10
        while sim.count(a) < 50 + 120 and time.monotonic() < deadline:
            time.sleep(0.01)
        sim.set_faults(drift_rate=0)
        listed = sim.calls(a)
        new = listed[: len(listed) - 50]
        assert len(new) >= 120 and len(new) % 40 == 0
        for i in range(0, len(new), 40):
            assert len({c["start_time"] for c in new[i : i + 40]}) == 1
        assert_sorted(listed)


# --- the tail ----------------------------------------------------------------------------------


def test_history_older_than_the_retention_window_is_not_listed() -> None:
    with Simulator(accounts=1, calls=2000, days=10, retention_days=5, seed=4) as sim:
        a = auth(sim)
        listed = sim.calls(a)
        assert 700 < len(listed) < 1300
        assert min(starts(listed)) >= ts(time.time() - 5 * 86400 - 5)
        assert sim.expired(a) == []
        assert Pages(sim).get(per_page=1)["pagination"]["total_count"] == len(listed)
        assert sim.oldest_start_time(a) == listed[-1]["start_time"]


def test_the_window_moves_with_the_clock_while_a_client_pages() -> None:
    with Simulator(accounts=1, calls=2000, days=2, retention_days=1.5, seed=6) as sim:
        a = auth(sim)
        before = sim.calls(a)
        pages = Pages(sim)
        first = pages.get(1, per_page=100)
        assert first["calls"] == before[:100]
        sim.advance_clock(6 * 3600)  # the window's start moves six hours
        cutoff = ts(sim.clock() - 1.5 * 86400)
        gone = [c for c in before if c["start_time"] < cutoff]
        assert gone
        second = pages.get(2, per_page=100)
        # Nothing arrived at the head, so page 2 is still positions 100-199.
        assert second["calls"] == before[100:200]
        assert second["pagination"]["total_count"] == len(before) - len(gone)
        assert sim.expired(a) == [c["call_uuid"] for c in reversed(gone)]
        assert sim.oldest_start_time(a) >= cutoff


def test_expire_oldest_cuts_the_tail_and_later_pages_shrink(sim: Simulator) -> None:
    a = auth(sim)
    before = sim.calls(a)
    pages = Pages(sim)
    assert pages.get(1, per_page=50)["calls"] == before[:50]
    expired = sim.expire_oldest(a, 70)
    assert expired == [c["call_uuid"] for c in reversed(before[-70:])]
    body = pages.get(5, per_page=50)
    assert body["calls"] == before[200:230]
    assert body["pagination"] == {"page": 5, "per_page": 50, "total_pages": 5, "total_count": 230}
    assert pages.get(6, per_page=50)["calls"] == []
    assert sim.listed_uuids(a) == [c["call_uuid"] for c in before[:230]]


def test_continuous_expiry_while_paging_keeps_each_page_at_its_place_from_the_head() -> None:
    with Simulator(accounts=1, calls=20_000, seed=10, expire_rate=3000) as sim:
        a = auth(sim)
        pages = Pages(sim)
        seen: list[list[str]] = []
        totals: list[int] = []
        for p in range(1, 201):
            body = pages.get(p, per_page=100)
            if not body["calls"]:
                break
            seen.append([c["call_uuid"] for c in body["calls"]])
            totals.append(body["pagination"]["total_count"])
        sim.set_faults(expire_rate=0)
        # Only the tail moved: the original list is what is listed now, then what expired.
        original = sim.listed_uuids(a) + list(reversed(sim.expired(a)))
        assert len(original) == 20_000 and sim.expired(a)
        for i, page in enumerate(seen):
            assert page == original[i * 100 : i * 100 + len(page)]
            assert len(page) == min(100, totals[i] - i * 100)
        assert totals == sorted(totals, reverse=True)


# --- the middle --------------------------------------------------------------------------------


def test_a_deleted_call_vanishes_and_a_restored_one_returns_to_its_place(sim: Simulator) -> None:
    a = auth(sim)
    before = sim.calls(a)
    victim = before[123]
    pages = Pages(sim)
    assert sim.delete_call(a, victim["call_uuid"]) == victim
    after = [c for p in (1, 2, 3) for c in pages.get(p)["calls"]]
    assert after == before[:123] + before[124:]
    assert pages.get(per_page=1)["pagination"]["total_count"] == 299
    assert sim.deleted(a) == [victim["call_uuid"]]
    with pytest.raises(KeyError):
        sim.set_call(a, victim["call_uuid"], status="busy")
    with pytest.raises(KeyError):
        sim.delete_call(a, victim["call_uuid"])
    sim.restore_call(a, victim["call_uuid"])
    assert [c for p in (1, 2, 3) for c in pages.get(p)["calls"]] == before
    assert sim.deleted(a) == []
    with pytest.raises(KeyError):
        sim.restore_call(a, victim["call_uuid"])


def test_a_call_deleted_then_aged_out_cannot_come_back(sim: Simulator) -> None:
    a = auth(sim)
    oldest = sim.calls(a)[-1]["call_uuid"]
    sim.delete_call(a, oldest)
    sim.expire_oldest(a, 5)
    with pytest.raises(ValueError):
        sim.restore_call(a, oldest)
    assert oldest not in sim.listed_uuids(a)


def test_random_deletions_leave_contiguous_pages_of_what_remains() -> None:
    with Simulator(accounts=1, calls=10_000, seed=12, delete_rate=2000) as sim:
        a = auth(sim)
        original = sim.listed_uuids(a)
        rank = {u: i for i, u in enumerate(original)}
        pages = Pages(sim)
        seen = [pages.uuids(p, per_page=100) for p in range(1, 101)]
        sim.set_faults(delete_rate=0)
        deleted = set(sim.deleted(a))
        assert deleted and set(sim.listed_uuids(a)) == set(original) - deleted
        for page in seen:
            ranks = [rank[u] for u in page]
            assert ranks == sorted(ranks)
            if ranks:
                # Whatever lies between a page's first and last call and is missing from it
                # was deleted.
                between = set(original[ranks[0] : ranks[-1] + 1]) - set(page)
                assert between <= deleted


def test_a_late_call_is_listed_behind_the_head_at_its_sorted_place(sim: Simulator) -> None:
    a = auth(sim)
    before = sim.calls(a)
    target = before[150]
    # Half a second into the target's second, so the call starts in it.
    age = sim.clock() - dt.datetime.fromisoformat(target["start_time"]).timestamp() - 0.5
    late = sim.add_late_call(a, age, direction="inbound")
    assert late["start_time"] == target["start_time"] and late["direction"] == "inbound"
    assert late["status"] not in ("ringing", "in-progress")
    assert late["end_time"] <= ts(sim.clock() + 1)
    listed = sim.calls(a)
    at = next(i for i, c in enumerate(listed) if c["start_time"] == target["start_time"])
    # First among the calls of its second: it was listed last.
    assert listed[at] == late
    assert listed[:at] + listed[at + 1 :] == before
    pages = Pages(sim)
    assert pages.get(per_page=1)["pagination"]["total_count"] == 301
    assert [c for p in (1, 2, 3, 4) for c in pages.get(p)["calls"]] == listed
    two_days = sim.add_late_call(a, 2 * 86400)
    assert two_days in sim.calls(a)
    assert_sorted(sim.calls(a))


def test_a_late_call_older_than_the_window_is_refused() -> None:
    with Simulator(accounts=1, calls=100, days=3, retention_days=2, seed=2) as sim:
        with pytest.raises(ValueError):
            sim.add_late_call(auth(sim), 3 * 86400)
        with pytest.raises(ValueError):
            sim.add_late_call(auth(sim), 60, start_time="2026-01-01T00:00:00Z")


def test_background_late_listings_keep_the_list_sorted_and_pages_contiguous() -> None:
    with Simulator(accounts=1, calls=5000, seed=13, late_rate=1000,
                   late_max_age_s=86400) as sim:
        a = auth(sim)
        original = set(sim.listed_uuids(a))
        pages = Pages(sim)
        seen = [pages.get(p, per_page=100)["calls"] for p in range(1, 51)]
        sim.set_faults(late_rate=0)
        final = sim.calls(a)
        assert len(final) > 5000
        assert_sorted(final)
        rank = {c["call_uuid"]: i for i, c in enumerate(final)}
        for page in seen:
            assert_sorted(page)
            ranks = [rank[c["call_uuid"]] for c in page]
            assert ranks == sorted(ranks)
            if ranks:
                # No call that was listed all along is skipped inside a page.
                between = {c["call_uuid"] for c in final[ranks[0] : ranks[-1] + 1]}
                assert between & original <= {c["call_uuid"] for c in page}


# --- filters under change ----------------------------------------------------------------------


def test_filtered_pages_and_counts_follow_every_kind_of_change(sim: Simulator) -> None:
    a = auth(sim)
    pages = Pages(sim)

    def check() -> None:
        listed = sim.calls(a)
        for params in ({"status": "completed"}, {"direction": "inbound"},
                       {"status": "completed", "direction": "outbound"}):
            want = [c for c in listed if all(c[k] == v for k, v in params.items())]
            body = pages.get(1, per_page=100, **params)
            assert body["pagination"]["total_count"] == len(want)
            got = [c for p in (1, 2, 3, 4) for c in pages.get(p, per_page=100, **params)["calls"]]
            assert got == want

    check()
    sim.add_calls(a, 30)
    check()
    completed = [c for c in sim.calls(a) if c["status"] == "completed"]
    sim.delete_call(a, completed[40]["call_uuid"])
    check()
    sim.add_late_call(a, 3 * 3600, status="completed", direction="outbound")
    check()
    sim.expire_oldest(a, 25)
    check()
    sim.restore_call(a, completed[40]["call_uuid"])
    check()
    sim.set_call(a, completed[3]["call_uuid"], status="failed")
    check()


def test_the_tail_is_cut_in_place_without_losing_a_call() -> None:
    # Enough expiry to make the list drop its aged-out front several times over.
    with Simulator(accounts=1, calls=30_000, seed=14, open_fraction=0.0) as sim:
        a = auth(sim)
        before = sim.calls(a)
        for _ in range(5):
            sim.expire_oldest(a, 5000)
            sim.add_calls(a, 100)
        listed = sim.calls(a)
        assert len(listed) == 5000 + 500
        assert listed[500:] == before[:5000]
        pages = Pages(sim)
        assert pages.get(55, per_page=100)["calls"] == listed[5400:5500]
        want = [c for c in listed if c["status"] == "busy"]
        got = [c for p in range(1, 20) for c in pages.get(p, status="busy")["calls"]]
        assert got == want
