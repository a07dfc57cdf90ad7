"""The loader's fast paths: records keep the text they arrived as, each dialect's upsert counts
and writes exactly the new and changed rows, and the CLI starts without the database stack."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from etl.client import _page_from
from etl.loader import in_transaction, upsert_calls
from etl.migrate import upgrade
from etl.records import CallRow, Received, loads_page, parse_call
from tests.conftest import PROJECT
from tests.helpers import stored_rows

T1 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)


def _record(uuid: str, **fields: Any) -> dict[str, Any]:
    return {"call_uuid": uuid, "from": "+15550001", "to": "+15550002", "direction": "inbound",
            "status": "completed", "duration": 30, "start_time": "2026-04-30T10:00:00Z",
            "answer_time": "2026-04-30T10:00:05Z", "end_time": "2026-04-30T10:00:35Z",
            "end_reason": "hangup", **fields}


def _body(records_text: list[str], *, pretty: bool = False) -> bytes:
    sep = ",\n   " if pretty else ","
    pagination = ('"pagination":{"page":1,"per_page":100,"total_pages":1,'
                  f'"total_count":{len(records_text)}}}')
    return ("{ \"calls\" : [ " + sep.join(records_text) + " ] , " + pagination + "}").encode()


def _page(body: bytes) -> list[Any]:
    response = requests.Response()
    response.status_code = 200
    response._content = body
    response.headers["Content-Type"] = "application/json"
    return _page_from(response, {"page": "1"}).records


def _rows(records_text: list[str], account: str = "MA1") -> list[CallRow]:
    rows = [parse_call(r, account) for r in _page(_body(records_text))]
    assert all(isinstance(r, CallRow) for r in rows), rows
    return rows  # type: ignore[return-value]


# -- decoding -------------------------------------------------------------------------------

AWKWARD_BODIES = [
    '{"calls":[],"pagination":{}}',
    ' \n{ "calls" : [ {"a" : 1} ,{"b":[1,{"c":null}]}\t] , "pagination":{"page":1} }\r\n',
    '{"pagination":{"page":1},"calls":[{"x":"\\u00e9\\ud83d\\udcde"},{"y":"\\"quoted\\""}]}',
    '{"calls":[1,"two",null,[3],{"n":NaN}],"pagination":{}}',
    '{"calls":[{"a":1}],"calls":[{"a":2}],"pagination":{}}',
    '{"calls":{"not":"a list"},"pagination":{}}',
    '{"calls":[{"big":123456789012345678901234567890,"f":1.5e-7,"neg":-0.0}]}',
    '[{"calls":[]}]',
    '"just a string"',
]
BROKEN_BODIES = ['{"calls":[{"a":1}]', '{"calls":[{"a":1}]} trailing', '{"calls":[{"a":1},]}',
                 "\ufeff{}", "", '{"calls" [] }', "{'calls': []}"]


@pytest.mark.parametrize("body", AWKWARD_BODIES)
def test_loads_page_decodes_exactly_as_json_loads(body: str):
    decoded = loads_page(body)
    assert decoded == json.loads(body) or body.count("NaN")  # NaN != NaN: compare the texts below
    assert json.dumps(decoded) == json.dumps(json.loads(body))
    calls = decoded.get("calls") if isinstance(decoded, dict) else None
    for record in calls if isinstance(calls, list) else []:
        if isinstance(record, dict):
            assert type(record) is Received
            assert record.text in body
            assert json.dumps(json.loads(record.text)) == json.dumps(record)


@pytest.mark.parametrize("body", BROKEN_BODIES)
def test_loads_page_rejects_what_json_loads_rejects(body: str):
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ValueError):
        loads_page(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=5), max_size=5),
       indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans())
def test_every_record_keeps_its_own_text(records: list[dict[str, Any]], indent: int | None,
                                         ascii_only: bool):
    body = json.dumps({"calls": records, "pagination": {"page": 1}}, indent=indent,
                      ensure_ascii=ascii_only)
    decoded = loads_page(body)
    assert decoded == json.loads(body)
    texts = [r.text for r in decoded["calls"]]
    assert [json.loads(t) for t in texts] == records
    at = 0
    for piece in texts:  # each text is the body's own slice, in order
        at = body.index(piece, at) + len(piece)


def test_a_page_in_another_charset_still_decodes():
    response = requests.Response()
    response.status_code = 200
    response._content = '{"calls":[{"to":"caf\u00e9"}],"pagination":{}}'.encode("utf-16")
    response.headers["Content-Type"] = "application/json; charset=utf-16"
    response.encoding = "utf-16"
    with pytest.raises(Exception, match="pagination"):  # decoded, then judged malformed
        _page_from(response, {"page": "1"})


# -- storing ----------------------------------------------------------------------------------

RAW_TEXTS = [
    # spacing, escapes and key order a re-encoder would change; a number wider than 64 bits
    '{ "call_uuid" : "raw-1", "start_time" : "2026-04-30T10:00:00Z", "to" : "caf\\u00e9 \\ud83d\\udcde",'
    ' "big" : 123456789012345678901234567890, "small" : 1.5e-7, "z" : 1, "a" : [ ] }',
    '{"zz":{"nested":[1,2,{"k":"v"}]},"call_uuid":"raw-2","start_time":"2026-04-30T11:00:00+02:00",'
    '"status":"ringing","from":"+1 \\"quoted\\" \\\\slash"}',
]


def test_raw_is_stored_as_received_on_every_database(any_database_url, engine_for):
    engine = engine_for(any_database_url)
    upgrade(engine)
    rows = _rows(RAW_TEXTS)
    assert [r.raw_text for r in rows] == RAW_TEXTS

    counts = in_transaction(engine, lambda conn: upsert_calls(conn, rows, T1))

    assert counts.new == 2
    stored = stored_rows(engine)
    for received in RAW_TEXTS:
        value = json.loads(received)
        assert stored[value["call_uuid"]]["raw"] == value
        assert type(stored[value["call_uuid"]]["raw"]["big" if "big" in value else "zz"]) is type(
            value["big" if "big" in value else "zz"])
    if engine.dialect.name == "sqlite":  # a text column: the very text received
        with engine.connect() as conn:
            texts = {r[0]: r[1] for r in conn.execute(text("SELECT call_uuid, raw FROM calls"))}
        assert texts == {"raw-1": RAW_TEXTS[0], "raw-2": RAW_TEXTS[1]}
    assert stored["raw-2"]["start_time"] == datetime(2026, 4, 30, 9, 0, tzinfo=UTC)


def test_mixed_batches_write_only_new_and_changed_rows_on_every_database(any_database_url,
                                                                          engine_for):
    engine = engine_for(any_database_url)
    upgrade(engine)
    first = [_record("same"), _record("status"), _record("extra"), _record("respelled")]
    assert in_transaction(engine, lambda conn: upsert_calls(
        conn, _rows([json.dumps(r) for r in first]), T1)).new == 4
    versions = _row_versions(engine)

    second = [
        json.dumps(_record("same")),
        json.dumps(_record("status", status="failed", duration=None)),
        json.dumps(_record("extra", tags=["vip"])),  # a field only `raw` holds
        json.dumps(_record("respelled"), indent=3, separators=(" ,", " : ")),  # same value
        json.dumps(_record("new", start_time="2026-04-30T09:00:00.250000+01:00")),
        json.dumps(_record("new", status="ringing")),  # met twice in a batch: the later wins
    ]
    counts = in_transaction(engine, lambda conn: upsert_calls(conn, _rows(second), T2))

    assert (counts.new, counts.updated, counts.unchanged) == (1, 2, 2)
    stored = stored_rows(engine)
    assert {u: (r["first_seen_at"], r["updated_at"]) for u, r in stored.items()} == {
        "same": (T1, T1), "status": (T1, T2), "extra": (T1, T2), "respelled": (T1, T1),
        "new": (T2, T2)}
    assert stored["status"]["status"] == "failed" and stored["status"]["duration"] is None
    assert stored["extra"]["raw"]["tags"] == ["vip"]
    assert stored["new"]["status"] == "ringing"
    if versions is not None:  # PostgreSQL: unchanged rows keep their very row version
        after = _row_versions(engine)
        assert after is not None
        assert after["same"] == versions["same"] and after["respelled"] == versions["respelled"]
        assert after["status"] != versions["status"]

    again = in_transaction(engine, lambda conn: upsert_calls(conn, _rows(second), T2 + T2.resolution))
    assert (again.new, again.updated, again.unchanged) == (0, 0, 5)


def _row_versions(engine: Any) -> dict[str, str] | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(text("SELECT call_uuid, xmin::text FROM calls"))}


def test_rows_written_by_an_older_encoder_count_as_unchanged(sqlite_url, engine_for):
    """Before `raw` was stored as received, it was re-encoded with json.dumps' spacing; the same
    value must not make every stored row look changed after an upgrade."""
    engine = engine_for(sqlite_url)
    upgrade(engine)
    record = _record("old", to="caf\u00e9")
    rows = _rows([json.dumps(record, separators=(",", ":"), ensure_ascii=False)])
    in_transaction(engine, lambda conn: upsert_calls(conn, rows, T1))
    with engine.begin() as conn:
        conn.execute(text("UPDATE calls SET raw = :raw"), {"raw": json.dumps(record)})

    counts = in_transaction(engine, lambda conn: upsert_calls(conn, rows, T2))

    assert (counts.updated, counts.unchanged) == (0, 1)
    assert stored_rows(engine)["old"]["updated_at"] == T1


def test_rows_built_without_received_text_still_store_their_raw(any_database_url, engine_for):
    engine = engine_for(any_database_url)
    upgrade(engine)
    item = parse_call(_record("plain", to="caf\u00e9"), "MA1")  # a plain dict: no text kept
    assert isinstance(item, CallRow) and item.raw_text is None
    in_transaction(engine, lambda conn: upsert_calls(conn, [item], T1))
    assert stored_rows(engine)["plain"]["raw"] == _record("plain", to="caf\u00e9")
    again = in_transaction(engine, lambda conn: upsert_calls(conn, [item], T2))
    assert again.unchanged == 1


# -- start-up ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["sync", "--help"], ["sync", "--jobs", "0"],
                                  ["--version"], ["no-such-command"]])
def test_help_and_usage_errors_do_not_import_the_database_stack(args: list[str]):
    probe = (
        "import sys\n"
        "from etl.cli import cli\n"
        f"try:\n    cli({args!r}, prog_name='etl')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'alembic', 'requests', 'urllib3') "
        "if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=PROJECT, timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr


def test_a_page_flags_exactly_the_stored_calls_it_proves_gone_on_every_database(
        any_database_url, engine_for):
    # Stored: calls at 10:00:00 .. 10:00:09, one per second, two at 10:00:05. A page listing
    # 10:00:02 .. 10:00:08 without the 10:00:04 call and one of the 10:00:05 pair proves both
    # gone, unless the transaction's other pages list them (`listed`); the calls at its edge
    # seconds and outside it prove nothing.
    from etl.sheets import Span
    from etl.state import flag_absent

    engine = engine_for(any_database_url)
    upgrade(engine)
    at = [f"2026-04-30T10:00:0{s}Z" for s in range(10)]
    stored = [_record(f"c{s}", start_time=at[s]) for s in range(10)]
    stored.append(_record("c5b", start_time=at[5]))
    other = _record("x4", start_time=at[4])  # another account's call, same second
    rows = _rows([json.dumps(r) for r in stored]) + _rows([json.dumps(other)], account="MA2")
    in_transaction(engine, lambda conn: upsert_calls(conn, rows, T1))
    page = Span(oldest=datetime(2026, 4, 30, 10, 0, 2, tzinfo=UTC),
                newest=datetime(2026, 4, 30, 10, 0, 8, tzinfo=UTC),
                uuids=frozenset({"c2", "c3", "c5", "c6", "c7", "c8"}))

    def deleted() -> set[str]:
        with engine.connect() as conn:
            return {u for (u,) in conn.execute(
                text("SELECT call_uuid FROM calls WHERE deleted_at IS NOT NULL"))}

    assert in_transaction(engine, lambda c: flag_absent(c, "MA1", [page], T2, listed={"c4"})) == 1
    assert deleted() == {"c5b"}
    assert in_transaction(engine, lambda c: flag_absent(c, "MA1", [page], T2)) == 1
    assert deleted() == {"c5b", "c4"}
    assert in_transaction(engine, lambda c: flag_absent(c, "MA1", [page], T2)) == 0  # flagged once
