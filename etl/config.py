"""Load and validate `config.toml`: every mistake is one line naming the key, before any request."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .tokens import token_variable

DEFAULT_CONFIG_PATH = "config.toml"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> timedelta:
    """`"15m"`, `"2h"`, `"1d"`, `"30s"` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '15m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like '15m', '2h' or '1d', got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a finite, non-negative duration, got {value!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"is too long: {value!r}") from None


def parse_when(value: object) -> datetime:
    """`YYYY-MM-DD` (midnight UTC) or an ISO-8601 datetime (no offset means UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment = datetime.fromisoformat(text)
            else:
                moment = datetime.fromisoformat(text.replace(" ", "T", 1))
        except ValueError:
            raise ValueError(
                f"expected YYYY-MM-DD or an ISO-8601 datetime, got {text!r}"
            ) from None
    try:
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"is out of range: {value!r}") from None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(value: object) -> str:
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        raise ValueError(f"must use https (plain http is allowed only on loopback), got {url!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; tokens come from token_env")
    return url


def _number(kind: type, low: float, high: float | None = None) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = kind(value) if kind is float else int(str(value), 10)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        if kind is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"expected an integer, got {value!r}")
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value!r}")
        return number

    return check


def _share(value: object) -> float:
    number = _number(float, -math.inf)(value)
    if not 0 < number <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {value!r}")
    return float(number)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _database_url(value: object) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = _text(value)
    try:
        make_url(text)
    except ArgumentError:
        raise ValueError(f"not a SQLAlchemy database URL: {text!r}") from None
    return text


_NO_DEFAULT: Any = object()


def setting(default: Any = _NO_DEFAULT, check: Callable[[object], Any] = str) -> Any:
    """A configuration key: its default and the check that turns a TOML value into it (or
    raises ValueError saying why not)."""
    if default is _NO_DEFAULT:
        return field(metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _checks(settings: type) -> dict[str, Callable[[object], Any]]:
    """The keys of a settings class, each with its check, in definition order."""
    return {f.name: f.metadata["check"] for f in fields(settings)}


@dataclass(frozen=True)
class Account:
    """One Vox account to sync; the token itself is read from `token_env` when needed."""

    name: str = setting(check=_text)
    auth_id: str = setting(check=_text)
    token_env: str = setting(check=_text)

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """The account's bearer token, from its environment variable."""
        value = (os.environ if environ is None else environ).get(self.token_env, "")
        if not value.strip():
            raise ConfigError(
                f"account {self.name!r}: environment variable {self.token_env} "
                "(accounts.token_env) is not set"
            )
        return value.strip()


@dataclass(frozen=True)
class ApiSettings:
    """[api]: each key's default and check in one place (adding a key is this one line)."""

    base_url: str = setting("https://api.tryvox.io/v1", check_base_url)
    timeout: float = setting(30.0, _number(float, 0.1, 3600))
    max_attempts: int = setting(8, _number(int, 1, 100))
    concurrency: int = setting(4, _number(int, 1, 64))
    requests_per_second: float = setting(0.0, _number(float, 0, 10_000))
    per_page: int = setting(100, _number(int, 1, 100))
    backoff_initial: float = setting(0.5, _number(float, 0, 600))
    backoff_max: float = setting(30.0, _number(float, 0, 3600))
    retry_after_max: float = setting(120.0, _number(float, 0, 3600))
    rate_share: float = setting(1.0, _share)
    max_throttle_seconds: float = setting(600.0, _number(float, 1, 86_400))


@dataclass(frozen=True)
class SyncSettings:
    """[sync]."""

    lookback: timedelta = setting(timedelta(minutes=15), parse_duration)
    start_date: datetime | None = setting(None, parse_when)


@dataclass(frozen=True)
class Config:
    database_url: str = "sqlite:///calls.db"
    api: ApiSettings = field(default_factory=ApiSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    accounts: tuple[Account, ...] = ()
    source: str = "<defaults>"

    def select(self, names: tuple[str, ...] | list[str]) -> list[Account]:
        """The accounts named (all when none are), in configuration order."""
        if not names:
            return list(self.accounts)
        known = {a.name: a for a in self.accounts}
        unknown = [n for n in names if n not in known]
        if unknown:
            configured = ", ".join(known) or "none"
            raise ConfigError(f"unknown account {unknown[0]!r} (configured: {configured})")
        wanted = set(names)
        return [a for a in self.accounts if a.name in wanted]


_API_KEYS = _checks(ApiSettings)
_SYNC_KEYS = _checks(SyncSettings)
_DATABASE_KEYS: dict[str, Callable[[object], Any]] = {"url": _database_url}
_ACCOUNT_KEYS = _checks(Account)
_SECTIONS = {"database": _DATABASE_KEYS, "api": _API_KEYS, "sync": _SYNC_KEYS}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_table(section: str, table: object, keys: Mapping[str, Callable[[object], Any]]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    checked = {}
    for key, value in table.items():
        if key not in keys:
            allowed = ", ".join(keys)
            raise ConfigError(f"unknown key [{section}].{key} (known: {allowed})")
        try:
            checked[key] = keys[key](value)
        except ValueError as exc:
            raise ConfigError(f"[{section}].{key}: {exc}") from None
    return checked


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`ETL_<SECTION>_<KEY>` overrides a key of [database], [api] or [sync]."""
    overrides: dict[str, dict[str, str]] = {}
    for section, keys in _SECTIONS.items():
        for key in keys:
            name = f"ETL_{section.upper()}_{key.upper()}"
            if environ.get(name, "").strip():
                overrides.setdefault(section, {})[key] = environ[name]
    if environ.get("ETL_DATABASE_URL", "").strip():
        overrides.setdefault("database", {})["url"] = environ["ETL_DATABASE_URL"]
    return overrides


def load_config(
    path: str | Path | None = None,
    *,
    database_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    require_file: bool = True,
) -> Config:
    """Read `path` (default `./config.toml`, env `ETL_CONFIG`), apply overrides, validate."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("ETL_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
    elif require_file:
        raise ConfigError(
            f"configuration file {path} not found (copy config.example.toml, or pass --config)"
        )

    for key in data:
        if key not in (*_SECTIONS, "accounts"):
            raise ConfigError(f"{path}: unknown key [{key}] (known: database, api, sync, accounts)")
    sections = {name: _check_table(name, data.get(name, {}), keys) for name, keys in _SECTIONS.items()}
    for section, values in _env_overrides(environ).items():
        sections[section].update(_check_table(section, values, _SECTIONS[section]))
    if database_url:
        sections["database"].update(_check_table("database", {"url": database_url}, _DATABASE_KEYS))

    api = ApiSettings(**sections["api"])
    if api.backoff_max < api.backoff_initial:
        raise ConfigError("[api].backoff_max must be at least [api].backoff_initial")

    raw_accounts = data.get("accounts", [])
    if not isinstance(raw_accounts, list):
        raise ConfigError("[[accounts]] must be an array of tables")
    accounts: list[Account] = []
    for index, entry in enumerate(raw_accounts, start=1):
        label = f"accounts #{index}"
        values = _check_table(label, entry, _ACCOUNT_KEYS)
        for key in _ACCOUNT_KEYS:
            if key not in values:
                raise ConfigError(f"[{label}]: missing key {key}")
        if not _ENV_NAME.match(values["token_env"]):
            raise ConfigError(
                f"[{label}].token_env: must name an environment variable, got {values['token_env']!r}"
            )
        if any(a.name == values["name"] for a in accounts):
            raise ConfigError(f"[{label}].name: duplicate account name {values['name']!r}")
        if any(a.auth_id == values["auth_id"] for a in accounts):
            raise ConfigError(f"[{label}].auth_id: duplicate auth_id {values['auth_id']!r}")
        accounts.append(Account(**values))

    return Config(
        database_url=sections["database"].get("url", Config.database_url),
        api=api,
        sync=SyncSettings(**sections["sync"]),
        accounts=tuple(accounts),
        source=str(path),
    )


def render_config(base_url: str, accounts: Any, database_url: str, *,
                  api: Mapping[str, Any] | None = None,
                  sync: Mapping[str, Any] | None = None) -> str:
    """A config.toml for the given accounts (objects with `name` and `auth_id`), each token
    read from its `VOX_TOKEN_<NAME>` variable. `api` holds [api] keys besides `base_url` (by
    default the quick backoff `etl simulate --write-config` uses); `sync` the [sync] keys."""
    api = {"backoff_initial": 0.05, "backoff_max": 2} if api is None else api
    lines = ["[database]", f"url = {_toml(database_url)}", "", "[api]",
             f"base_url = {_toml(base_url)}"]
    lines += [f"{key} = {_toml(value)}" for key, value in api.items()]
    if sync:
        lines += ["", "[sync]", *(f"{key} = {_toml(value)}" for key, value in sync.items())]
    for account in accounts:
        lines += ["", "[[accounts]]", f"name = {_toml(account.name)}",
                  f"auth_id = {_toml(account.auth_id)}",
                  f"token_env = {_toml(token_variable(account.name))}"]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    """A TOML value: JSON's string escapes are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
