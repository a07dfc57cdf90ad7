"""parse_call: one API call object in, a CallRow or a Reject with its reason out, never an exception."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.records import CallRow, Reject, parse_call, parse_timestamp

ACCOUNT = "MA123456"

# The first call of the reference response in /work/shared/api/list-calls.txt.
REFERENCE = {
    "call_uuid": "650e8400-e29b-41d4-a716-446655440000",
    "from": "+14155551234",
    "to": "+14155556789",
    "direction": "outbound",
    "status": "completed",
    "duration": 125,
    "start_time": "2026-04-09T10:30:00Z",
    "answer_time": "2026-04-09T10:30:05Z",
    "end_time": "2026-04-09T10:32:10Z",
    "end_reason": "caller-hangup",
}


def reference(**changes: object) -> dict:
    record = copy.deepcopy(REFERENCE)
    record.update(changes)
    return record


def without(key: str) -> dict:
    record = reference()
    del record[key]
    return record


def assert_rejected(result: CallRow | Reject, *words: str) -> Reject:
    assert isinstance(result, Reject), f"expected a Reject, got {result!r}"
    assert result.account_id == ACCOUNT
    assert result.reason
    for word in words:
        assert word in result.reason, f"{word!r} not in reason {result.reason!r}"
    return result


# -- the reference record -----------------------------------------------------------------------


def test_reference_record_becomes_a_row_with_aware_utc_times():
    row = parse_call(reference(), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.call_uuid == "650e8400-e29b-41d4-a716-446655440000"
    assert row.account_id == ACCOUNT
    assert row.from_number == "+14155551234"
    assert row.to_number == "+14155556789"
    assert row.direction == "outbound"
    assert row.status == "completed"
    assert row.end_reason == "caller-hangup"
    assert row.duration == 125
    assert row.start_time == datetime(2026, 4, 9, 10, 30, 0, tzinfo=UTC)
    assert row.answer_time == datetime(2026, 4, 9, 10, 30, 5, tzinfo=UTC)
    assert row.end_time == datetime(2026, 4, 9, 10, 32, 10, tzinfo=UTC)
    for moment in (row.start_time, row.answer_time, row.end_time):
        assert moment.tzinfo is UTC
    assert not row.is_open


def test_raw_is_the_record_itself():
    record = reference()
    row = parse_call(record, ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.raw is record
    assert row.values()["raw"] == REFERENCE


def test_values_holds_every_column_of_the_calls_table():
    row = parse_call(reference(), ACCOUNT)
    assert isinstance(row, CallRow)
    assert set(row.values()) == {
        "call_uuid", "account_id", "from_number", "to_number", "direction", "status",
        "end_reason", "duration", "start_time", "answer_time", "end_time", "raw",
    }


def test_second_reference_record_parses_too():
    record = {
        "call_uuid": "750e8400-e29b-41d4-a716-446655440001",
        "from": "+14155551234",
        "to": "+14155557890",
        "direction": "outbound",
        "status": "completed",
        "duration": 87,
        "start_time": "2026-04-09T09:15:00Z",
        "answer_time": "2026-04-09T09:15:03Z",
        "end_time": "2026-04-09T09:16:30Z",
        "end_reason": "callee-hangup",
    }
    row = parse_call(record, ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.duration == 87


# -- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-09T12:30:00+02:00", datetime(2026, 4, 9, 10, 30, tzinfo=UTC)),
        ("2026-04-09T05:30:00-05:00", datetime(2026, 4, 9, 10, 30, tzinfo=UTC)),
        ("2026-04-09T00:30:00-10:00", datetime(2026, 4, 9, 10, 30, tzinfo=UTC)),
        ("2026-04-10T01:00:00+14:30", datetime(2026, 4, 9, 10, 30, tzinfo=UTC)),
        ("2026-04-09T10:30:00+00:00", datetime(2026, 4, 9, 10, 30, tzinfo=UTC)),
        ("2026-04-09T10:30:00.250Z", datetime(2026, 4, 9, 10, 30, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_offsets_are_converted_to_utc(text, expected):
    row = parse_call(reference(start_time=text, answer_time=text, end_time=text), ACCOUNT)
    assert isinstance(row, CallRow)
    for moment in (row.start_time, row.answer_time, row.end_time):
        assert moment == expected
        assert moment.tzinfo is UTC


@pytest.mark.parametrize("text", ["2026-04-09T10:30:00", "2026-04-09 10:30:00"])
def test_naive_timestamps_are_read_as_utc(text):
    row = parse_call(reference(start_time=text), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.start_time == datetime(2026, 4, 9, 10, 30, tzinfo=UTC)
    assert row.start_time.tzinfo is UTC


def test_parse_timestamp_returns_the_utc_singleton_for_a_zero_offset_zone():
    moment = parse_timestamp("2026-04-09T10:30:00+00:00")
    assert moment.tzinfo is UTC
    assert parse_timestamp(" 2026-04-09T10:30:00Z ").tzinfo is UTC


def test_open_call_without_answer_end_or_duration_is_a_row():
    record = reference(status="ringing", answer_time=None, end_time=None, duration=None,
                       end_reason=None)
    row = parse_call(record, ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.is_open
    assert (row.answer_time, row.end_time, row.duration, row.end_reason) == (None, None, None, None)


def test_in_progress_call_is_open():
    row = parse_call(reference(status="in-progress", end_time=None), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.is_open


def test_missing_optional_fields_are_none():
    row = parse_call({"call_uuid": "c-1", "start_time": "2026-04-09T10:30:00Z"}, ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.from_number is row.to_number is row.direction is row.status is None
    assert row.duration is None and row.answer_time is None and row.end_time is None


# -- unknown fields and values ------------------------------------------------------------------


def test_unknown_fields_are_kept_in_raw():
    record = reference(recording_url="https://example.test/r.mp3", tags=["vip"], cost={"usd": 0.1})
    row = parse_call(record, ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.raw["recording_url"] == "https://example.test/r.mp3"
    assert row.raw["tags"] == ["vip"]
    assert row.raw["cost"] == {"usd": 0.1}


@pytest.mark.parametrize("status", ["voicemail", "queued", "COMPLETED", "transferred"])
def test_unknown_status_values_are_kept_as_received(status):
    row = parse_call(reference(status=status), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.status == status
    assert not row.is_open


def test_unknown_direction_values_are_kept_as_received():
    row = parse_call(reference(direction="internal"), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.direction == "internal"


def test_whole_number_float_duration_is_an_integer():
    row = parse_call(reference(duration=125.0), ACCOUNT)
    assert isinstance(row, CallRow)
    assert row.duration == 125
    assert type(row.duration) is int


# -- rejects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (without("call_uuid"), ["call_uuid"]),
        (reference(call_uuid=""), ["call_uuid"]),
        (reference(call_uuid=None), ["call_uuid"]),
        (reference(call_uuid=12345), ["call_uuid", "int"]),
        (reference(call_uuid=["a"]), ["call_uuid"]),
        (reference(call_uuid=" padded "), ["call_uuid"]),
        (reference(call_uuid="x" * 256), ["call_uuid"]),
        (reference(start_time="not a time"), ["start_time"]),
        (reference(start_time="2026-13-45T99:00:00Z"), ["start_time"]),
        (without("start_time"), ["start_time"]),
        (reference(start_time=None), ["start_time"]),
        (reference(start_time=""), ["start_time"]),
        (reference(start_time=1712658600), ["start_time"]),
        (reference(answer_time=1712658605), ["answer_time"]),
        (reference(answer_time=["2026-04-09T10:30:05Z"]), ["answer_time"]),
        (reference(end_time="yesterday"), ["end_time"]),
        (reference(duration="125"), ["duration"]),
        (reference(duration=1.5), ["duration"]),
        (reference(duration=True), ["duration"]),
        (reference(duration=False), ["duration"]),
        (reference(duration=float("nan")), ["duration"]),
        (reference(duration=float("inf")), ["duration"]),
        (reference(duration=2**40), ["duration"]),
        (reference(**{"from": 14155551234}), ["from"]),
        (reference(to={"number": "+1"}), ["to"]),
        (reference(status=3), ["status"]),
        (reference(direction=True), ["direction"]),
    ],
)
def test_broken_records_are_rejected_with_a_reason_naming_the_field(record, words):
    reject = assert_rejected(parse_call(record, ACCOUNT), *words)
    assert json.loads(reject.record) == json.loads(json.dumps(record, allow_nan=True))


@pytest.mark.parametrize(
    ("record", "kind"),
    [([REFERENCE], "list"), ("650e8400", "str"), (None, "NoneType"), (42, "int")],
)
def test_a_record_that_is_not_an_object_is_rejected(record, kind):
    reject = assert_rejected(parse_call(record, ACCOUNT), "not a JSON object", kind)
    assert json.loads(reject.record) == record


def test_reject_keeps_the_record_verbatim_and_finds_its_uuid():
    record = reference(duration="125")
    reject = assert_rejected(parse_call(record, ACCOUNT), "duration")
    assert json.loads(reject.record) == record
    assert reject.call_uuid == REFERENCE["call_uuid"]


def test_reject_without_a_string_uuid_has_none():
    assert assert_rejected(parse_call(without("call_uuid"), ACCOUNT)).call_uuid is None
    assert assert_rejected(parse_call(reference(call_uuid=7), ACCOUNT)).call_uuid is None
    assert assert_rejected(parse_call([1, 2], ACCOUNT)).call_uuid is None


def test_timestamps_out_of_range_are_rejected_not_raised():
    for text in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1900-01-01T00:00:00Z"):
        assert_rejected(parse_call(reference(start_time=text), ACCOUNT), "start_time")


def test_non_string_keys_and_unserialisable_values_still_give_a_reject():
    record = {"call_uuid": 1, object(): "x"}  # not JSON at all: the reject falls back to repr
    reject = assert_rejected(parse_call(record, ACCOUNT), "call_uuid")
    assert isinstance(reject.record, str) and reject.record


# -- property: the parser is total --------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1))
        | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
    )
    style = draw(st.sampled_from(["Z", "naive", "offset", "space"]))
    if style == "Z":
        return moment.isoformat() + "Z"
    if style == "naive":
        return moment.isoformat()
    if style == "space":
        return moment.isoformat(sep=" ")
    minutes = draw(st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
    return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


PLAUSIBLE = {
    "call_uuid": st.text(min_size=1, max_size=40) | st.uuids().map(str),
    "from": st.text(max_size=20),
    "to": st.text(max_size=20),
    "direction": st.sampled_from(["inbound", "outbound", "sideways"]),
    "status": st.sampled_from(["ringing", "in-progress", "completed", "no-answer", "weird"]),
    "duration": st.integers(min_value=0, max_value=86_400)
    | st.integers(min_value=-(2**33), max_value=2**33)
    | st.floats(),
    "start_time": timestamps(),
    "answer_time": timestamps(),
    "end_time": timestamps(),
    "end_reason": st.text(max_size=20),
}

@st.composite
def call_like(draw: st.DrawFn) -> dict:
    """A dict built from the real keys: mostly plausible values, sometimes any JSON value or
    none at all, plus a few unknown keys."""
    record = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    for key, plausible in PLAUSIBLE.items():
        choice = draw(st.sampled_from(["plausible"] * 12 + ["absent", "absent", "any"]))
        if choice == "plausible":
            record[key] = draw(plausible)
        elif choice == "any":
            record[key] = draw(json_values)
        else:
            record.pop(key, None)
    return record


def _check_total(record: object) -> None:
    result = parse_call(record, ACCOUNT)
    assert isinstance(result, CallRow | Reject)
    assert result.account_id == ACCOUNT
    if isinstance(result, Reject):
        assert isinstance(result.reason, str) and result.reason
        assert isinstance(result.record, str) and result.record
        return
    assert isinstance(record, dict)
    assert result.raw is record
    assert result.call_uuid == record["call_uuid"]
    assert isinstance(result.call_uuid, str) and result.call_uuid
    assert result.start_time.tzinfo is UTC
    for moment in (result.answer_time, result.end_time):
        assert moment is None or moment.tzinfo is UTC
    assert result.duration is None or type(result.duration) is int


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_parse_call_never_raises_on_arbitrary_json(record):
    _check_total(record)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_like())
def test_parse_call_never_raises_on_records_with_the_real_keys(record):
    _check_total(record)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({key: strategy for key, strategy in PLAUSIBLE.items()
                              if key in ("call_uuid", "start_time")}))
def test_a_uuid_and_a_start_time_in_range_make_a_row(record):
    result = parse_call(record, ACCOUNT)
    uuid = record["call_uuid"]
    plausible_uuid = len(uuid) <= 255 and uuid == uuid.strip()
    if not plausible_uuid:
        assert isinstance(result, Reject)
        return
    try:
        start = parse_timestamp(record["start_time"])
    except (ValueError, OverflowError):
        assert isinstance(result, Reject)
        return
    if 1970 <= start.year <= 9998:
        assert isinstance(result, CallRow)
        assert result.start_time == start
        assert result.start_time.tzinfo is UTC
    else:
        assert isinstance(result, Reject)
