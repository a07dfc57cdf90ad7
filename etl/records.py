"""The record parser: one API call object in, a typed row or a reject with its reason out.

Pure and total: whatever JSON arrives, `parse_call` returns a `CallRow` or a `Reject`, never raises.

A record is stored exactly as received: `loads_page` decodes a response body as `json.loads`
does, except that each object of its `calls` array comes back as a `Received` dict that also
carries its own slice of the body's text, which becomes `CallRow.raw_text` — the loader stores
that text instead of re-encoding the dict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

OPEN_STATUSES = frozenset({"ringing", "in-progress"})
KNOWN_STATUSES = ("ringing", "in-progress", "completed", "failed", "busy", "no-answer", "canceled")
KNOWN_DIRECTIONS = ("inbound", "outbound")

_MAX_KEY = 255


@dataclass(slots=True)
class CallRow:
    """A call as the `calls` table stores it (timestamps timezone-aware UTC).

    Every other field is derived from `raw` by `parse_call` (the loader relies on it: on
    SQLite it cuts timestamps' storage text from `raw`'s own strings). Treated as immutable
    (it passes from the plan's thread to the loader's) but not frozen: a frozen dataclass's
    `__init__` sets each of the 13 fields through `object.__setattr__`, 1.6 µs per call
    against 0.2, a third of what parsing a record costs."""

    call_uuid: str
    account_id: str
    from_number: str | None
    to_number: str | None
    direction: str | None
    status: str | None
    end_reason: str | None
    duration: int | None
    start_time: datetime
    answer_time: datetime | None
    end_time: datetime | None
    raw: dict[str, Any]
    # The record's JSON text exactly as received, when known (see `loads_page`).
    raw_text: str | None = field(default=None, compare=False, repr=False)

    @property
    def raw_json(self) -> str:
        """`raw` as JSON text: the received text itself when known, else re-encoded."""
        text = self.raw_text
        return json.dumps(self.raw) if text is None else text

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def values(self) -> dict[str, Any]:
        return {
            "call_uuid": self.call_uuid,
            "account_id": self.account_id,
            "from_number": self.from_number,
            "to_number": self.to_number,
            "direction": self.direction,
            "status": self.status,
            "end_reason": self.end_reason,
            "duration": self.duration,
            "start_time": self.start_time,
            "answer_time": self.answer_time,
            "end_time": self.end_time,
            "raw": self.raw,
        }


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that cannot become a row, kept verbatim with the reason."""

    account_id: str
    reason: str
    record: str

    @property
    def call_uuid(self) -> str | None:
        value = self._field("call_uuid")
        return value if isinstance(value, str) else None

    @property
    def start_time(self) -> datetime | None:
        """The record's start_time, when it has a usable one (where the list holds it)."""
        value = self._field("start_time")
        try:
            return parse_timestamp(value) if isinstance(value, str) else None
        except (ValueError, OverflowError):
            return None

    def _field(self, key: str) -> object:
        try:
            return json.loads(self.record).get(key)
        except (ValueError, AttributeError):
            return None


def parse_timestamp(value: str) -> datetime:
    """An ISO-8601 timestamp as aware UTC; no offset means UTC. Raises ValueError."""
    text = value.strip()
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    if moment.utcoffset():
        return moment.astimezone(UTC)
    return moment if moment.tzinfo is UTC else moment.replace(tzinfo=UTC)


class Received(dict[str, Any]):
    """A record decoded from a response body, with its exact text there (`text`)."""

    __slots__ = ("text",)
    text: str


# JSON's own whitespace, skipped as json.loads skips it; the pattern always matches (maybe empty).
_WS: Callable[[str, int], re.Match[str]] = re.compile(r"[ \t\n\r]*").match  # type: ignore[assignment]
# The C scanner json.loads itself runs: (value, end) for the JSON value starting at an index.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads_page(text: str) -> Any:
    """Decode a response body exactly as `json.loads(text)` would, except that each object in a
    top-level `calls` array is a `Received` dict carrying its own text. Raises ValueError (a
    `json.JSONDecodeError`) on what is not JSON."""
    try:
        return _split(text)
    except (StopIteration, IndexError, _Unusual):
        return json.loads(text)  # the general decoder: its value, or its error


class _Unusual(Exception):
    """The body is not the plain shape `_split` walks; leave it to json.loads."""


def _split(text: str) -> Any:
    """Walk a top-level object with the standard library's own scanner, slicing each object
    of its `calls` array out of the text as it goes."""
    ws, scan, end_of = _WS, _SCAN, len(text)
    at = ws(text, 0).end()
    if text[at] != "{":
        raise _Unusual
    body: dict[str, Any] = {}
    at = ws(text, at + 1).end()
    if text[at] == "}":
        at += 1
    else:
        while True:
            if text[at] != '"':
                raise _Unusual
            key, at = scan(text, at)
            at = ws(text, at).end()
            if text[at] != ":":
                raise _Unusual
            at = ws(text, at + 1).end()
            if key == "calls" and text[at] == "[":
                body[key], at = _split_array(text, at)
            else:
                body[key], at = scan(text, at)
            at = ws(text, at).end()
            if text[at] == "}":
                at += 1
                break
            if text[at] != ",":
                raise _Unusual
            at = ws(text, at + 1).end()
    if ws(text, at).end() != end_of:
        raise _Unusual
    return body


def _split_array(text: str, at: int) -> tuple[list[Any], int]:
    ws, scan = _WS, _SCAN
    items: list[Any] = []
    at = ws(text, at + 1).end()
    if text[at] == "]":
        return items, at + 1
    shared: tuple[str, ...] = ()
    while True:
        value, end = scan(text, at)
        if type(value) is dict:
            # Each scan has its own key strings; records of a page share one set of them (as
            # json.loads' memo would), which saves about 0.5 kB per record kept in memory.
            keys = tuple(value)
            if keys == shared:
                record = Received(zip(shared, value.values(), strict=True))
            else:
                shared = keys
                record = Received(value)
            record.text = text[at:end]
            value = record
        items.append(value)
        at = ws(text, end).end()
        if text[at] == "]":
            return items, at + 1
        if text[at] != ",":
            raise _Unusual
        at = ws(text, at + 1).end()


def verbatim(record: object) -> str:
    """The record as JSON text: as received when known, else as close as a parsed value allows."""
    if type(record) is Received:
        return record.text
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return repr(record)


def parse_call(record: object, account_id: str) -> CallRow | Reject:
    """Turn one API call object into a `CallRow`, or a `Reject` saying why it cannot be one."""
    try:
        return _parse(record, account_id)
    except _Invalid as exc:
        return Reject(account_id=account_id, reason=str(exc), record=verbatim(record))
    except Exception as exc:  # the parser must be total: anything unforeseen is a reject too
        return Reject(
            account_id=account_id,
            reason=f"unparsable record ({type(exc).__name__})",
            record=verbatim(record),
        )


class _Invalid(ValueError):
    pass


def _parse(record: object, account_id: str) -> CallRow:
    # Written for speed (it runs once per call on the loading thread): local names, no
    # intermediate containers, the common case of each check first.
    if not isinstance(record, dict):
        raise _Invalid(f"not a JSON object but {type(record).__name__}")
    get = record.get
    uuid = get("call_uuid")
    if uuid is None or uuid == "":
        raise _Invalid("no call_uuid")
    if not isinstance(uuid, str):
        raise _Invalid(f"call_uuid is {type(uuid).__name__}, not a string")
    if len(uuid) > _MAX_KEY or uuid != uuid.strip():
        raise _Invalid("call_uuid is not a plausible identifier")

    # Each text field: None, or a str of at most _MAX_KEY characters; _text says what is wrong.
    texts = [get(key) for key in _TEXT_KEYS]
    for index, value in enumerate(texts):
        if value is not None and (type(value) is not str or len(value) > _MAX_KEY):
            texts[index] = _text(record, _TEXT_KEYS[index])
    from_number, to_number, direction, status, end_reason = texts

    start = get("start_time")
    if start is None or start == "":
        raise _Invalid("no start_time")
    start_time = _timestamp("start_time", start)
    assert start_time is not None

    duration = get("duration")
    if duration is not None and (type(duration) is not int or not -(2**31) <= duration < 2**31):
        duration = _duration(duration)

    return CallRow(
        uuid,
        account_id,
        from_number,
        to_number,
        direction,
        status,
        end_reason,
        duration,
        start_time,
        _timestamp("answer_time", get("answer_time")),
        _timestamp("end_time", get("end_time")),
        record,
        record.text if type(record) is Received else None,
    )


# The record's text fields, in the order _parse unpacks them.
_TEXT_KEYS = ("from", "to", "direction", "status", "end_reason")


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None or (type(value) is str and len(value) <= _MAX_KEY):
        return value
    if not isinstance(value, str):
        raise _Invalid(f"{key} is {type(value).__name__}, not a string")
    if len(value) > _MAX_KEY:
        raise _Invalid(f"{key} is longer than {_MAX_KEY} characters")
    return value


def _duration(duration: object) -> int:
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise _Invalid(f"duration is {type(duration).__name__}, not a number")
    if duration != duration or duration in (float("inf"), float("-inf")):
        raise _Invalid("duration is not a finite number")
    if isinstance(duration, float):
        if not duration.is_integer():
            raise _Invalid(f"duration {duration} is not a whole number of seconds")
        duration = int(duration)
    if not -(2**31) <= duration < 2**31:
        raise _Invalid("duration is out of range")
    return duration


_fromisoformat = datetime.fromisoformat


def _timestamp(key: str, value: object) -> datetime | None:
    if value is None:
        return None
    if type(value) is str:  # the common case, UTC as received: no conversion needed
        try:
            moment = _fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is UTC and 1970 <= moment.year <= 9998:
                return moment
    if not isinstance(value, str):
        raise _Invalid(f"{key} is {type(value).__name__}, not a timestamp string")
    try:
        moment = parse_timestamp(value)
    except (ValueError, OverflowError):
        raise _Invalid(f"{key} {value[:64]!r} is not an ISO-8601 timestamp") from None
    if not 1970 <= moment.year <= 9998:
        raise _Invalid(f"{key} {value[:64]!r} is out of range")
    return moment
