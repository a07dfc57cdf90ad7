"""The test hooks behind /_sim/NAME: each takes the request's arguments (the JSON body or the
query string) and calls the Simulator method of the same meaning; see the package docstring.

A handler raises ValueError or TypeError for a bad argument (400) and KeyError for an unknown
account or call (404); what it returns is sent as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Simulator


def _need(args: dict[str, Any], key: str) -> Any:
    if key not in args:
        raise ValueError(f"missing {key!r}")
    return args[key]


def _int(args: dict[str, Any], key: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if value is None:
        raise ValueError(f"missing {key!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be an integer") from None


def _num(args: dict[str, Any], key: str) -> float:
    try:
        return float(_need(args, key))
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number") from None


def _bool(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _optional_num(args: dict[str, Any], key: str) -> float | None:
    return None if args.get(key) is None else _num(args, key)


def _fields(args: dict[str, Any]) -> dict[str, Any]:
    fields = args.get("fields") or {}
    if not isinstance(fields, dict):
        raise ValueError("fields must be a JSON object")
    return fields


def _help(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"hooks": {f"/_sim/{name}": method for name, (method, _) in sorted(HOOKS.items())}}


def _accounts(sim: Simulator, args: dict[str, Any]) -> Any:
    return {
        "accounts": [
            {"name": a.name, "auth_id": a.auth_id, "token": a.token, "listed": sim.count(a.auth_id)}
            for a in sim.accounts
        ]
    }


def _config(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"config": sim.config_dict()}


def _stats(sim: Simulator, args: dict[str, Any]) -> Any:
    auth_id = args.get("auth_id")
    out = sim.stats(auth_id)
    out["by_status"] = {str(k): v for k, v in out["by_status"].items()}
    out["limits"] = sim.limit_stats(auth_id)
    return out


def _calls(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"calls": sim.calls(_need(args, "auth_id"))}


def _open_calls(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"calls": sim.open_calls(_need(args, "auth_id"))}


def _truth(sim: Simulator, args: dict[str, Any]) -> Any:
    auth_id = _need(args, "auth_id")
    return {
        "listed": sim.listed_uuids(auth_id),
        "deleted": sim.deleted(auth_id),
        "expired": sim.expired(auth_id),
        "oldest_start_time": sim.oldest_start_time(auth_id),
    }


def _reset_stats(sim: Simulator, args: dict[str, Any]) -> Any:
    sim.reset_stats()
    return {}


def _add_calls(sim: Simulator, args: dict[str, Any]) -> Any:
    calls = sim.add_calls(
        _need(args, "auth_id"),
        _int(args, "n"),
        open_fraction=_optional_num(args, "open_fraction"),
        same_second=_bool(args, "same_second"),
        spread_s=_optional_num(args, "spread_s") or 0,
    )
    return {"calls": calls}


def _add_record(sim: Simulator, args: dict[str, Any]) -> Any:
    sim.add_record(_need(args, "auth_id"), _need(args, "record"))
    return {}


def _late_call(sim: Simulator, args: dict[str, Any]) -> Any:
    auth_id, age = _need(args, "auth_id"), _num(args, "age_seconds")
    return {"call": sim.add_late_call(auth_id, age, **_fields(args))}


def _set_call(sim: Simulator, args: dict[str, Any]) -> Any:
    sim.set_call(_need(args, "auth_id"), _need(args, "call_uuid"), **_fields(args))
    return {}


def _delete(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"call": sim.delete_call(_need(args, "auth_id"), _need(args, "call_uuid"))}


def _restore(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"call": sim.restore_call(_need(args, "auth_id"), _need(args, "call_uuid"))}


def _expire(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"expired": sim.expire_oldest(_need(args, "auth_id"), _int(args, "n"))}


def _finish_open_calls(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"finished": sim.finish_open_calls(args.get("auth_id"))}


def _faults(sim: Simulator, args: dict[str, Any]) -> Any:
    sim.set_faults(**args)
    return {"config": sim.config_dict()}


def _inject(sim: Simulator, args: dict[str, Any]) -> Any:
    responses = _need(args, "responses")
    if not isinstance(responses, list):
        raise ValueError("responses must be a JSON list")
    sim.inject(_need(args, "auth_id"), *responses)
    return {}


def _clock(sim: Simulator, args: dict[str, Any]) -> Any:
    return {"offset_s": sim.advance_clock(_num(args, "seconds"))}


HookFunc = Callable[["Simulator", dict[str, Any]], Any]
HOOKS: dict[str, tuple[str, HookFunc]] = {
    "help": ("GET", _help),
    "accounts": ("GET", _accounts),
    "config": ("GET", _config),
    "stats": ("GET", _stats),
    "calls": ("GET", _calls),
    "open-calls": ("GET", _open_calls),
    "truth": ("GET", _truth),
    "reset-stats": ("POST", _reset_stats),
    "add-calls": ("POST", _add_calls),
    "add-record": ("POST", _add_record),
    "late-call": ("POST", _late_call),
    "set-call": ("POST", _set_call),
    "delete": ("POST", _delete),
    "restore": ("POST", _restore),
    "expire": ("POST", _expire),
    "finish-open-calls": ("POST", _finish_open_calls),
    "faults": ("POST", _faults),
    "inject": ("POST", _inject),
    "clock": ("POST", _clock),
}
