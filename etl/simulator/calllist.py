"""One account's call list and how it changes: arrivals, late listings, deletions, expiry.

The order is the API's: newest first by `start_time`, and among calls sharing one second the one
listed later first. Each call has a key, `start_second << 32 | listing_sequence`, that never
changes. `order` holds the keys ascending (oldest first), with the served bytes and the filter
columns in lists beside it, so an arrival is an append and a page is a slice counted from the
end. The oldest calls leave by moving `lo` forward (the front is cut away only now and then), so
continuous expiry costs O(1) per call. Late listings and deletions insert into or delete from
the middle (a memmove per list, fine at a few per second). The filter indexes map a value to
ascending keys, which stay valid under every change; keys at or below `floor` have aged out, so
a filtered count is a bisection.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..records import OPEN_STATUSES
from .config import SimulatorConfig
from .generate import (
    Call,
    Numbers,
    answer_record,
    arriving_call,
    encode,
    finish_record,
    finished_call,
    history_starts,
    open_call,
    parse_ts,
)

SEQ_BITS = 32
# The filter columns (status, direction, from, to, by query parameter), then call_uuid.
ST, DIR, FROM, TO, UUID = range(5)

Row = tuple[Any, Any, Any, Any, Any]
Filters = list[tuple[int, str]]


def _row(record: dict[str, Any]) -> Row:
    get = record.get
    return get("status"), get("direction"), get("from"), get("to"), get("call_uuid")


def _call_row(call: Call) -> Row:
    return call.status, call.direction, call.frm, call.to, call.call_uuid


class CallList:
    """The listed calls of one account plus the truth a test needs (what left, and how).

    Not thread-safe: the owner holds a lock around every call.
    """

    def __init__(
        self,
        rng: random.Random,
        dyn_rng: random.Random,
        numbers: Numbers,
        clock: Callable[[], float],
    ) -> None:
        self.rng = rng  # data: new records and their outcomes
        self.dyn_rng = dyn_rng  # which calls vanish, how late they are
        self.numbers = numbers
        self.clock = clock
        # Parallel lists, ascending by key; index lo onwards is listed.
        self.order: list[int] = []
        self.blobs: list[bytes] = []
        self.cols: tuple[list[Any], ...] = ([], [], [], [], [])
        self.lo = 0
        self.floor = -1  # every key <= floor has aged out
        self.idx: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {})
        self._by_uuid: dict[str, int] | None = None  # built when first needed
        self.seq = 0
        self.newest = 0  # the start second of the newest key ever listed
        self.open_since: dict[int, float] = {}
        self.fate: dict[int, bool] = {}  # ringing call -> will it be answered
        self.combo: dict[tuple[tuple[int, str], ...], list[int]] = {}  # filters -> keys
        self.deleted: dict[str, tuple[int, bytes, Row]] = {}  # call_uuid -> call, in order
        self.expired_log: list[str | None] = []
        self.carry: dict[str, float] = {}
        self.last_advance: float | None = None

    # -- building -------------------------------------------------------------------------------

    def load_history(self, cfg: SimulatorConfig, t_end: int) -> None:
        """Generate cfg.calls calls over cfg.days ending at t_end, a handful still open."""
        rng, numbers = self.rng, self.numbers
        starts, open_set = history_starts(
            rng, cfg.calls, cfg.days, t_end, cfg.burst_every, cfg.burst_calls
        )
        keys = [start << SEQ_BITS | i for i, start in enumerate(starts)]
        blobs = self.blobs
        add_blob = blobs.append
        st, dr, fr, to, uu = (col.append for col in self.cols)
        for i, start in enumerate(starts):
            if i in open_set:
                call = open_call(rng, numbers, start, t_end)
            else:
                call = finished_call(rng, numbers, start, t_end)
            add_blob(call.to_json())
            st(call.status)
            dr(call.direction)
            fr(call.frm)
            to(call.to)
            uu(call.call_uuid)
        self.seq = len(starts)
        self.order = keys
        for idx, col in zip(self.idx, self.cols, strict=False):
            for k, value in zip(keys, col, strict=True):
                lst = idx.get(value)
                if lst is None:
                    idx[value] = [k]
                else:
                    lst.append(k)
        since = time.monotonic()
        for i in open_set:
            self.open_since[keys[i]] = since
        self.newest = t_end
        if cfg.retention_days is not None:
            # History older than the window was never listed: drop it without a trace.
            self._drop_before(math.ceil(self.clock() - cfg.retention_days * 86400), log=False)

    # -- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.order) - self.lo

    def _pos(self, key: int) -> int:
        """The position of a listed key; KeyError when it is not listed."""
        pos = bisect.bisect_left(self.order, key, self.lo)
        if pos == len(self.order) or self.order[pos] != key:
            raise KeyError(key)
        return pos

    def _listed(self, col: list[Any]) -> list[Any]:
        """A column's listed values, newest first."""
        return col[: self.lo - 1 if self.lo else None : -1]

    def listed_records(self) -> list[dict[str, Any]]:
        """Every listed call, newest first, parsed from the bytes the server sends."""
        return json.loads(b"[" + b",".join(self._listed(self.blobs)) + b"]")

    def listed_uuids(self) -> list[str | None]:
        return self._listed(self.cols[UUID])

    def records(self, keys: Iterable[int]) -> list[dict[str, Any]]:
        """Parsed records of listed keys, in the order given."""
        blobs = self.blobs
        return json.loads(b"[" + b",".join(blobs[self._pos(k)] for k in keys) + b"]")

    def _row_at(self, pos: int) -> Row:
        st, dr, fr, to, uu = self.cols
        return st[pos], dr[pos], fr[pos], to[pos], uu[pos]

    def record(self, key: int) -> dict[str, Any]:
        return json.loads(self.blobs[self._pos(key)])

    def oldest_start(self) -> int | None:
        """The sort second of the oldest listed call (the window's start), None when empty."""
        return self.order[self.lo] >> SEQ_BITS if self.lo < len(self.order) else None

    def page(self, filters: Filters, page: int, per_page: int) -> bytes:
        """The response body for one page: O(per_page) unfiltered, O(per_page log n) filtered
        (a combination of filters costs one intersection the first time it is asked for)."""
        if not filters:
            n, start = len(self.order), self.lo
            hi = n - (page - 1) * per_page
            chunk = self.blobs[max(start, hi - per_page) : hi] if hi > start else []
            chunk.reverse()
        else:
            keys = self.matching(filters)
            n, start = len(keys), bisect.bisect_right(keys, self.floor)
            hi = n - (page - 1) * per_page
            chosen = keys[max(start, hi - per_page) : hi] if hi > start else []
            blobs, pos = self.blobs, self._pos
            chunk = [blobs[pos(k)] for k in reversed(chosen)]
        total = n - start
        pages = -(-total // per_page)
        return b"".join(
            (
                b'{"calls":[',
                b",".join(chunk),
                b'],"pagination":{"page":%d,"per_page":%d,"total_pages":%d,"total_count":%d}}'
                % (page, per_page, pages, total),
            )
        )

    def matching(self, filters: Filters) -> list[int]:
        """Ascending keys matching every filter (aged-out ones may lead).

        A combination of filters is built once, by intersecting the single-filter indexes,
        and then kept up to date by every change like the indexes themselves.
        """
        lists = [self.idx[f].get(v, []) for f, v in filters]
        if len(lists) == 1:
            return lists[0]
        cache_key = tuple(filters)
        found = self.combo.get(cache_key)
        if found is None:
            lists.sort(key=len)
            found = lists[0][bisect.bisect_right(lists[0], self.floor) :]
            for other in lists[1:]:
                if not found:
                    break
                members = set(other[bisect.bisect_right(other, self.floor) :])
                found = [k for k in found if k in members]
            if len(self.combo) >= 32:
                del self.combo[next(iter(self.combo))]
            self.combo[cache_key] = found
        return found

    def open_keys(self) -> list[int]:
        """Listed ringing and in-progress calls, oldest first."""
        st = self.idx[ST]
        floor = self.floor
        keys = [k for s in OPEN_STATUSES for k in st.get(s, ()) if k > floor]
        keys.sort()
        return keys

    @property
    def by_uuid(self) -> dict[str, int]:
        """call_uuid -> key of the listed calls (the newest, for a repeated id)."""
        if self._by_uuid is None:
            self._by_uuid = {
                u: k
                for u, k in zip(self.cols[UUID][self.lo :], self.order[self.lo :], strict=True)
                if isinstance(u, str)
            }
        return self._by_uuid

    def find(self, call_uuid: str) -> int:
        """The key of the listed call with that call_uuid."""
        key = self.by_uuid.get(call_uuid)
        if key is None:
            raise KeyError(f"no listed call {call_uuid!r}")
        return key

    # -- arrivals and edits ---------------------------------------------------------------------

    def _next_key(self, start: int) -> int:
        self.seq += 1
        return start << SEQ_BITS | self.seq

    def _index_fields(self, key: int, row: Row, at_head: bool) -> None:
        for filters, found in self.combo.items():
            if all(row[f] == v for f, v in filters):
                if at_head:
                    found.append(key)
                else:
                    bisect.insort(found, key)
        for f, idx in enumerate(self.idx):
            value = row[f]
            if isinstance(value, str):
                lst = idx.get(value)
                if lst is None:
                    idx[value] = [key]
                elif at_head:
                    lst.append(key)
                else:
                    bisect.insort(lst, key)

    def _unindex_fields(self, key: int, row: Row) -> None:
        for filters, found in self.combo.items():
            if all(row[f] == v for f, v in filters):
                del found[bisect.bisect_left(found, key)]
        for f, idx in enumerate(self.idx):
            value = row[f]
            if isinstance(value, str):
                lst = idx[value]
                del lst[bisect.bisect_left(lst, key)]
                if not lst:
                    del idx[value]

    def _joined(self, key: int, row: Row) -> None:
        uuid = row[UUID]
        if self._by_uuid is not None and isinstance(uuid, str):
            self._by_uuid[uuid] = key
        if row[ST] in OPEN_STATUSES:
            self.open_since.setdefault(key, time.monotonic())

    def _left(self, key: int, uuid: Any) -> None:
        if self._by_uuid is not None and isinstance(uuid, str) and self._by_uuid.get(uuid) == key:
            del self._by_uuid[uuid]
        self.open_since.pop(key, None)
        self.fate.pop(key, None)

    def _put_head(self, blob: bytes, row: Row, start: int | None) -> int:
        # A record whose start_time is unparsable or older than the head still goes at the head
        # (add_record's contract); its key carries the head's second so the order stays sorted.
        second = self.newest if start is None else max(start, self.newest)
        key = self._next_key(second)
        self.newest = second
        self.order.append(key)
        self.blobs.append(blob)
        for col, value in zip(self.cols, row, strict=True):
            col.append(value)
        self._index_fields(key, row, at_head=True)
        self._joined(key, row)
        return key

    def append_record(self, record: dict[str, Any]) -> None:
        """Put an arbitrary record, verbatim, at the head."""
        self._put_head(encode(record), _row(record), parse_ts(record.get("start_time")))

    def arrive(
        self, n: int, open_fraction: float, same_second: bool = False, spread_s: float = 0
    ) -> list[Call]:
        """n new calls at the head, oldest first. They start in one second: now, or with
        same_second the head's own second (a tie with calls already listed); with spread_s,
        at random seconds over the last spread_s seconds, none before the head's."""
        now = int(self.clock())
        if same_second and spread_s:
            raise ValueError("same_second and spread_s exclude each other")
        if spread_s:
            first = max(self.newest, now - int(spread_s))
            rnd = self.dyn_rng.random
            starts = sorted(first + int(rnd() * (now - first + 1)) for _ in range(n))
        else:
            start = self.newest if same_second and self.newest else max(now, self.newest)
            starts = [start] * n
        out = [arriving_call(self.rng, self.numbers, s, open_fraction) for s in starts]
        for call in out:
            self._put_head(call.to_json(), _call_row(call), call.start)
        return out

    def insert_late(self, age_seconds: float, fields: dict[str, Any]) -> dict[str, Any]:
        """List a finished call that started age_seconds before now, in its sorted place."""
        if "start_time" in fields:
            raise ValueError("a late call's start_time comes from age_seconds")
        if not age_seconds >= 0:
            raise ValueError("age_seconds must be >= 0")
        clock = self.clock()
        now, start = int(clock), math.floor(clock - age_seconds)
        if self.floor >= 0 and start < self.floor >> SEQ_BITS:
            raise ValueError(f"a call {age_seconds:g} s old is older than the window")
        key = self._next_key(start)
        call = finished_call(self.rng, self.numbers, start, now)
        record = call.to_dict()
        record.update(fields)
        self._insert(key, encode(record), _row(record))
        return record

    def _insert(self, key: int, blob: bytes, row: Row) -> None:
        order = self.order
        if not order or key > order[-1]:
            pos = len(order)
        else:
            pos = bisect.bisect_left(order, key, self.lo)
        order.insert(pos, key)
        self.blobs.insert(pos, blob)
        for col, value in zip(self.cols, row, strict=True):
            col.insert(pos, value)
        self.newest = max(self.newest, key >> SEQ_BITS)
        self._index_fields(key, row, at_head=False)
        self._joined(key, row)

    def replace(self, key: int, record: dict[str, Any]) -> None:
        """Swap the record at key, keeping its place in the order and the indexes right."""
        pos = self._pos(key)
        old, new = self._row_at(pos), _row(record)
        self.blobs[pos] = encode(record)
        if old != new or any(type(a) is not type(b) for a, b in zip(old, new, strict=True)):
            self._unindex_fields(key, old)
            for col, value in zip(self.cols, new, strict=True):
                col[pos] = value
            self._index_fields(key, new, at_head=False)
            if old[UUID] != new[UUID] and self._by_uuid is not None:
                if isinstance(old[UUID], str) and self._by_uuid.get(old[UUID]) == key:
                    del self._by_uuid[old[UUID]]
                if isinstance(new[UUID], str):
                    self._by_uuid[new[UUID]] = key
        if new[ST] in OPEN_STATUSES:
            self.open_since.setdefault(key, time.monotonic())
        else:
            self.open_since.pop(key, None)
            self.fate.pop(key, None)

    # -- leaving the list -----------------------------------------------------------------------

    def delete(self, call_uuid: str) -> dict[str, Any]:
        """Remove a listed call from inside the window; restore() brings it back."""
        key = self.find(call_uuid)
        return json.loads(self._delete_at(self._pos(key)))

    def _delete_at(self, pos: int) -> bytes:
        key = self.order.pop(pos)
        blob = self.blobs.pop(pos)
        row = self._row_at(pos)
        for col in self.cols:
            del col[pos]
        self._unindex_fields(key, row)
        self._left(key, row[UUID])
        self.deleted[row[UUID]] = (key, blob, row)
        return blob

    def restore(self, call_uuid: str) -> dict[str, Any]:
        """Put a deleted call back in its sorted place (its place among ties too)."""
        entry = self.deleted.pop(call_uuid, None)
        if entry is None:
            raise KeyError(f"no deleted call {call_uuid!r}")
        key, blob, row = entry
        if key <= self.floor:
            raise ValueError(f"call {call_uuid!r} aged out of the window while deleted")
        self._insert(key, blob, row)
        return json.loads(blob)

    def expire_oldest(self, n: int) -> list[str | None]:
        """The n oldest listed calls leave the list; returns their call_uuids, oldest first."""
        return self._expire_to(min(len(self.order), self.lo + max(0, n)), log=True)

    def _drop_before(self, second: int, log: bool = True) -> list[str | None]:
        """Calls that started before second leave the list."""
        if self.lo >= len(self.order) or self.order[self.lo] >> SEQ_BITS >= second:
            return []
        return self._expire_to(bisect.bisect_left(self.order, second << SEQ_BITS, self.lo), log)

    def _expire_to(self, new_lo: int, log: bool) -> list[str | None]:
        lo = self.lo
        if new_lo <= lo:
            return []
        uuids: list[str | None] = self.cols[UUID][lo:new_lo]
        if self._by_uuid is not None or self.open_since:
            for key, uuid in zip(self.order[lo:new_lo], uuids, strict=True):
                self._left(key, uuid)
        if log:
            self.expired_log.extend(uuids)
        self.floor = self.order[new_lo - 1]
        self.lo = new_lo
        if new_lo > 4096 and new_lo * 2 > len(self.order):
            self._compact()
        return uuids

    def _compact(self) -> None:
        """Cut the aged-out calls from the front of the lists and of every index."""
        lo = self.lo
        del self.order[:lo]
        del self.blobs[:lo]
        for col in self.cols:
            del col[:lo]
        self.lo = 0
        floor = self.floor
        for idx in self.idx:
            for value, lst in list(idx.items()):
                cut = bisect.bisect_right(lst, floor)
                if cut == len(lst):
                    del idx[value]
                elif cut:
                    del lst[:cut]
        for found in self.combo.values():
            del found[: bisect.bisect_right(found, floor)]

    # -- open calls -----------------------------------------------------------------------------

    def finish(self, key: int) -> None:
        """Give the open call at key a final status and end fields, as of now."""
        record = self.record(key)
        finish_record(self.rng, record, int(self.clock()), self.fate.get(key))
        self.replace(key, record)

    def tick_open(self, finish_after_s: float, now: float) -> None:
        """Advance open calls by wall time: ringing ones are answered halfway, all end at the limit."""
        if not self.open_since:
            return
        for key, since in list(self.open_since.items()):
            age = now - since
            if age >= finish_after_s:
                self.finish(key)
            elif age >= finish_after_s / 2 and self.cols[ST][self._pos(key)] == "ringing":
                if key not in self.fate:
                    self.fate[key] = self.rng.random() < 0.7
                if self.fate[key]:
                    record = self.record(key)
                    answer_record(record, int(self.clock()))
                    self.replace(key, record)

    # -- the clock ------------------------------------------------------------------------------

    def advance(self, cfg: SimulatorConfig, now: float) -> None:
        """Apply everything time does between the last call and now (monotonic seconds)."""
        last, self.last_advance = self.last_advance, now
        if cfg.retention_days is not None:
            self._drop_before(math.ceil(self.clock() - cfg.retention_days * 86400))
        if last is None:
            return
        elapsed = max(0.0, now - last)
        if cfg.expire_rate and (n := self._due("expire", cfg.expire_rate, elapsed)):
            self.expire_oldest(n)
        if cfg.delete_rate and (n := self._due("delete", cfg.delete_rate, elapsed)):
            self._delete_random(n)
        if cfg.late_rate and (n := self._due("late", cfg.late_rate, elapsed)):
            for _ in range(n):
                self._late_random(cfg.late_max_age_s)
        if cfg.drift_rate:
            carry = self.carry.get("drift", 0.0) + cfg.drift_rate * elapsed
            size = cfg.burst_size
            while carry >= size:
                self.arrive(size, cfg.open_fraction)
                carry -= size
            self.carry["drift"] = carry
        if cfg.finish_after_s is not None:
            self.tick_open(cfg.finish_after_s, now)

    def _due(self, name: str, rate: float, elapsed: float) -> int:
        carry = self.carry.get(name, 0.0) + rate * elapsed
        n = int(carry)
        self.carry[name] = carry - n
        return n

    def _delete_random(self, n: int) -> None:
        rnd = self.dyn_rng.random
        for _ in range(n):
            listed = len(self.order) - self.lo
            if listed == 0:
                return
            pos = self.lo + int(rnd() * listed)
            if isinstance(self.cols[UUID][pos], str):
                self._delete_at(pos)

    def _late_random(self, max_age: float) -> None:
        # Log-uniform from a minute (or less, when max_age is shorter): mostly minutes late,
        # rarely days. A call older than the window's start is listed at the start instead.
        low = min(60.0, max_age)
        age = math.exp(self.dyn_rng.uniform(math.log(low), math.log(max_age)))
        oldest = self.oldest_start()
        if oldest is None:
            if self.floor >= 0:
                return  # everything has aged out: there is no window to be late in
        else:
            # Whole seconds, so the call's start second is never before the oldest listed one.
            age = min(age, int(self.clock()) - oldest)
        self.insert_late(max(0.0, age), {})
