"""The record parser: one API call object in, a typed row or a reject with its reason out.

Pure and total: whatever JSON arrives, `parse_call` returns a `CallRow` or a `Reject`, never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OPEN_STATUSES = frozenset({"ringing", "in-progress"})
KNOWN_STATUSES = ("ringing", "in-progress", "completed", "failed", "busy", "no-answer", "canceled")
KNOWN_DIRECTIONS = ("inbound", "outbound")

_TEXT_FIELDS = (
    ("from", "from_number"),
    ("to", "to_number"),
    ("direction", "direction"),
    ("status", "status"),
    ("end_reason", "end_reason"),
)
_MAX_KEY = 255


@dataclass(frozen=True, slots=True)
class CallRow:
    """A call as the `calls` table stores it (timestamps timezone-aware UTC)."""

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


def verbatim(record: object) -> str:
    """The record as JSON text, as close to what was received as a parsed value allows."""
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
    if not isinstance(record, dict):
        raise _Invalid(f"not a JSON object but {type(record).__name__}")
    uuid = record.get("call_uuid")
    if uuid is None or uuid == "":
        raise _Invalid("no call_uuid")
    if not isinstance(uuid, str):
        raise _Invalid(f"call_uuid is {type(uuid).__name__}, not a string")
    if len(uuid) > _MAX_KEY or uuid != uuid.strip():
        raise _Invalid("call_uuid is not a plausible identifier")

    text: dict[str, str | None] = {}
    for key, column in _TEXT_FIELDS:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise _Invalid(f"{key} is {type(value).__name__}, not a string")
        if value is not None and len(value) > _MAX_KEY:
            raise _Invalid(f"{key} is longer than {_MAX_KEY} characters")
        text[column] = value

    start = record.get("start_time")
    if start is None or start == "":
        raise _Invalid("no start_time")
    start_time = _timestamp("start_time", start)
    assert start_time is not None

    duration = record.get("duration")
    if duration is not None:
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

    return CallRow(
        call_uuid=uuid,
        account_id=account_id,
        from_number=text["from_number"],
        to_number=text["to_number"],
        direction=text["direction"],
        status=text["status"],
        end_reason=text["end_reason"],
        duration=duration,
        start_time=start_time,
        answer_time=_timestamp("answer_time", record.get("answer_time")),
        end_time=_timestamp("end_time", record.get("end_time")),
        raw=record,
    )


def _timestamp(key: str, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{key} is {type(value).__name__}, not a timestamp string")
    try:
        moment = parse_timestamp(value)
    except (ValueError, OverflowError):
        raise _Invalid(f"{key} {value[:64]!r} is not an ISO-8601 timestamp") from None
    if not 1970 <= moment.year <= 9998:
        raise _Invalid(f"{key} {value[:64]!r} is out of range")
    return moment
