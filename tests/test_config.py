"""load_config: every key of SPEC.md's config section, defaults, overrides, and one-line errors.

Every test passes an explicit `environ=` so the real environment never leaks in.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etl.config import Account, ApiSettings, Config, load_config
from etl.errors import ConfigError

FULL = """
[database]
url = "postgresql+psycopg://etl@db.example.com:5432/warehouse"

[api]
base_url = "https://api.tryvox.io/v1"
timeout = 12.5
max_attempts = 5
concurrency = 3
requests_per_second = 7.5

[sync]
lookback = "2h"
start_date = "2025-01-01"

[[accounts]]
name = "acme"
auth_id = "MA123456"
token_env = "VOX_TOKEN_ACME"

[[accounts]]
name = "globex"
auth_id = "MA654321"
token_env = "VOX_TOKEN_GLOBEX"
"""

ACCOUNT = """
[[accounts]]
name = "acme"
auth_id = "MA123456"
token_env = "VOX_TOKEN_ACME"
"""


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def load(path: Path, environ: dict[str, str] | None = None, **kw) -> Config:
    return load_config(path, environ=environ or {}, **kw)


def config_error(path: Path, environ: dict[str, str] | None = None, **kw) -> str:
    """The ConfigError's message; asserts it is one line."""
    with pytest.raises(ConfigError) as info:
        load(path, environ, **kw)
    message = str(info.value)
    assert message
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# -- a full, valid configuration ----------------------------------------------------------------


def test_full_config_round_trips_every_key(write):
    path = write(FULL)
    config = load(path)
    assert config.database_url == "postgresql+psycopg://etl@db.example.com:5432/warehouse"
    assert config.api.base_url == "https://api.tryvox.io/v1"
    assert config.api.timeout == 12.5
    assert config.api.max_attempts == 5
    assert isinstance(config.api.max_attempts, int)
    assert config.api.concurrency == 3
    assert isinstance(config.api.concurrency, int)
    assert config.api.requests_per_second == 7.5
    assert config.sync.lookback == timedelta(hours=2)
    assert config.sync.start_date == datetime(2025, 1, 1, tzinfo=UTC)
    assert config.accounts == (
        Account("acme", "MA123456", "VOX_TOKEN_ACME"),
        Account("globex", "MA654321", "VOX_TOKEN_GLOBEX"),
    )
    assert config.source == str(path)


def test_the_example_in_the_spec_loads(write):
    config = load(write("""
        [database]
        url = "sqlite:///calls.db"        # any SQLAlchemy URL

        [api]
        base_url = "https://api.tryvox.io/v1"
        timeout = 30                       # seconds per request
        max_attempts = 8                   # per request, before the account fails
        concurrency = 4                    # requests in flight per account
        requests_per_second = 0            # client-side budget per account; 0 = none

        [sync]
        lookback = "15m"                   # window re-read behind the newest stored call
        start_date = "2025-01-01"          # optional: how far back the first sync reaches

        [[accounts]]
        name = "acme"                      # a label for logs and --account
        auth_id = "MA123456"
        token_env = "VOX_TOKEN_ACME"       # the token is read from this environment variable
    """))
    assert config.api.timeout == 30.0
    assert config.api.requests_per_second == 0.0
    assert config.sync.lookback == timedelta(minutes=15)
    assert [a.name for a in config.accounts] == ["acme"]


def test_tuning_keys_beyond_the_spec_are_accepted(write):
    config = load(write(ACCOUNT + """
        [api]
        per_page = 50
        backoff_initial = 0.25
        backoff_max = 10
        retry_after_max = 60
    """))
    assert (config.api.per_page, config.api.backoff_initial) == (50, 0.25)
    assert (config.api.backoff_max, config.api.retry_after_max) == (10.0, 60.0)


def test_defaults_apply_to_keys_left_out(write):
    config = load(write(ACCOUNT))
    assert config.database_url == "sqlite:///calls.db"
    assert config.api == ApiSettings()
    assert config.api.base_url == "https://api.tryvox.io/v1"
    assert config.api.timeout == 30.0
    assert config.api.max_attempts == 8
    assert config.api.concurrency == 4
    assert config.api.requests_per_second == 0.0
    assert config.sync.lookback == timedelta(minutes=15)
    assert config.sync.start_date is None


def test_an_empty_file_is_a_config_with_no_accounts(write):
    config = load(write(""))
    assert config.accounts == ()
    assert config.select([]) == []


def test_missing_file_is_allowed_when_not_required(tmp_path):
    config = load(tmp_path / "absent.toml", require_file=False)
    assert config == Config(source=str(tmp_path / "absent.toml"))


def test_etl_config_names_the_default_path(write):
    path = write(ACCOUNT, name="elsewhere.toml")
    config = load_config(None, environ={"ETL_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.accounts[0].name == "acme"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("90", 90), (45, 45), (1.5, 1.5),
     ("0m", 0)],
)
def test_lookback_accepts_units_and_plain_seconds(write, text, expected):
    value = f'"{text}"' if isinstance(text, str) else text
    config = load(write(f"[sync]\nlookback = {value}\n"))
    assert config.sync.lookback == timedelta(seconds=expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"2025-03-04"', datetime(2025, 3, 4, tzinfo=UTC)),
        ("2025-03-04", datetime(2025, 3, 4, tzinfo=UTC)),  # a TOML date
        ('"2025-03-04T05:06:07"', datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ('"2025-03-04T07:06:07+02:00"', datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2025-03-04T07:06:07+02:00", datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)),  # TOML datetime
    ],
)
def test_start_date_is_midnight_utc_or_an_iso_datetime(write, value, expected):
    config = load(write(f"[sync]\nstart_date = {value}\n"))
    assert config.sync.start_date == expected
    assert config.sync.start_date.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://localhost:8080", "http://[::1]:9000/v1", "http://127.0.0.2"],
)
def test_plain_http_is_allowed_on_loopback(write, url):
    assert load(write(f'[api]\nbase_url = "{url}"\n')).api.base_url == url


def test_trailing_slash_is_dropped_from_base_url(write):
    config = load(write('[api]\nbase_url = "https://api.example.com/v1/"\n'))
    assert config.api.base_url == "https://api.example.com/v1"


# -- unknown keys --------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named(write):
    message = config_error(write(ACCOUNT + "\n[apis]\ntimeout = 3\n"))
    assert "apis" in message


def test_unknown_top_level_scalar_is_named(write):
    assert "verbose" in config_error(write("verbose = true\n" + ACCOUNT))


@pytest.mark.parametrize("section", ["api", "sync", "database"])
def test_unknown_key_in_a_section_is_named(write, section):
    message = config_error(write(f"[{section}]\ntimeuot = 3\n"))
    assert f"[{section}].timeuot" in message


def test_unknown_key_in_an_account_is_named(write):
    message = config_error(write(ACCOUNT + 'token = "tvx_sk_live_secret"\n'))
    assert "accounts" in message and "token" in message
    assert "tvx_sk_live_secret" not in message  # never echo what might be a token


def test_a_section_that_is_not_a_table_is_an_error(write):
    assert "[api]" in config_error(write("api = 5\n"))


def test_accounts_that_are_not_an_array_of_tables_is_an_error(write):
    assert "accounts" in config_error(write('accounts = "acme"\n'))


# -- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("api", "timeout", "-1"),
        ("api", "timeout", "0"),
        ("api", "timeout", '"fast"'),
        ("api", "timeout", "true"),
        ("api", "timeout", "nan"),
        ("api", "timeout", "inf"),
        ("api", "max_attempts", "0"),
        ("api", "max_attempts", "1.5"),
        ("api", "max_attempts", '"many"'),
        ("api", "max_attempts", "-3"),
        ("api", "concurrency", "0"),
        ("api", "concurrency", "1000"),
        ("api", "requests_per_second", "-1"),
        ("api", "requests_per_second", "nan"),
        ("api", "per_page", "101"),
        ("api", "base_url", '"ftp://x"'),
        ("api", "base_url", '"api.tryvox.io/v1"'),
        ("api", "base_url", '"http://api.tryvox.io/v1"'),
        ("api", "base_url", '"http://10.0.0.5:8080"'),
        ("api", "base_url", '"https://user:secret@api.tryvox.io/v1"'),
        ("api", "base_url", '""'),
        ("sync", "lookback", '"soon"'),
        ("sync", "lookback", '"-5m"'),
        ("sync", "lookback", "-5"),
        ("sync", "lookback", "true"),
        ("sync", "start_date", '"yesterday"'),
        ("sync", "start_date", '"2025-13-01"'),
        ("database", "url", '"not a url"'),
        ("database", "url", '""'),
        ("database", "url", "5"),
    ],
)
def test_bad_value_is_a_one_line_error_naming_the_key(write, section, key, value):
    message = config_error(write(f"[{section}]\n{key} = {value}\n" + ACCOUNT))
    assert f"[{section}].{key}" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("lookback", '"999999999999d"'), ("lookback", "1e300"), ("lookback", "inf"),
     ("start_date", '"0001-01-01T00:00:00+01:00"')],
)
def test_out_of_range_sync_values_are_config_errors_not_crashes(write, key, value):
    message = config_error(write(f"[sync]\n{key} = {value}\n"))
    assert f"[sync].{key}" in message


def test_credentials_in_base_url_are_not_echoed(write):
    message = config_error(write('[api]\nbase_url = "https://user:hunter2@api.tryvox.io"\n'))
    assert "hunter2" not in message


def test_backoff_max_below_backoff_initial_is_an_error(write):
    message = config_error(write("[api]\nbackoff_initial = 5\nbackoff_max = 1\n"))
    assert "backoff_max" in message


# -- accounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["name", "auth_id", "token_env"])
def test_missing_account_key_is_named(write, missing):
    lines = {"name": 'name = "acme"', "auth_id": 'auth_id = "MA1"', "token_env": 'token_env = "T"'}
    del lines[missing]
    message = config_error(write("[[accounts]]\n" + "\n".join(lines.values()) + "\n"))
    assert missing in message
    assert "accounts" in message


@pytest.mark.parametrize("key", ["name", "auth_id", "token_env"])
def test_empty_account_value_is_named(write, key):
    values = {"name": "acme", "auth_id": "MA1", "token_env": "T", key: "  "}
    text = "[[accounts]]\n" + "\n".join(f'{k} = "{v}"' for k, v in values.items()) + "\n"
    assert key in config_error(write(text))


def test_duplicate_account_names_are_an_error(write):
    message = config_error(write(ACCOUNT + """
        [[accounts]]
        name = "acme"
        auth_id = "MA999"
        token_env = "VOX_TOKEN_OTHER"
    """))
    assert "name" in message and "acme" in message


def test_duplicate_auth_ids_are_an_error(write):
    message = config_error(write(ACCOUNT + """
        [[accounts]]
        name = "acme-again"
        auth_id = "MA123456"
        token_env = "VOX_TOKEN_OTHER"
    """))
    assert "auth_id" in message


@pytest.mark.parametrize("variable", ["VOX-TOKEN", "1TOKEN", "VOX TOKEN", "$VOX_TOKEN", "tvx_sk_live_abc.def"])
def test_token_env_must_be_a_variable_name(write, variable):
    text = f'[[accounts]]\nname = "acme"\nauth_id = "MA1"\ntoken_env = "{variable}"\n'
    assert "token_env" in config_error(write(text))


@pytest.mark.parametrize("variable", ["VOX_TOKEN", "_T", "vox_token_acme2"])
def test_token_env_accepts_variable_names(write, variable):
    text = f'[[accounts]]\nname = "acme"\nauth_id = "MA1"\ntoken_env = "{variable}"\n'
    assert load(write(text)).accounts[0].token_env == variable


# -- files ---------------------------------------------------------------------------------------


def test_missing_config_file_is_an_error_naming_the_path(tmp_path):
    path = tmp_path / "nowhere.toml"
    assert str(path) in config_error(path)


def test_missing_default_config_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load_config(environ={})


def test_invalid_toml_is_a_one_line_error_naming_the_file(write):
    path = write('[api\ntimeout = "30\n')
    message = config_error(path)
    assert str(path) in message
    assert "TOML" in message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[database]\nurl = "sqlite:///\xff\xfe.db"\n')
    config_error(path)


# -- tokens ---------------------------------------------------------------------------------------


def test_token_is_read_from_the_named_variable_and_stripped():
    account = Account("acme", "MA1", "VOX_TOKEN_ACME")
    assert account.token({"VOX_TOKEN_ACME": "  tvx_sk_live_abc\n"}) == "tvx_sk_live_abc"


@pytest.mark.parametrize("environ", [{}, {"VOX_TOKEN_ACME": ""}, {"VOX_TOKEN_ACME": "   "},
                                     {"VOX_TOKEN_OTHER": "tvx"}])
def test_missing_or_empty_token_variable_is_named(environ):
    account = Account("acme", "MA1", "VOX_TOKEN_ACME")
    with pytest.raises(ConfigError) as info:
        account.token(environ)
    message = str(info.value)
    assert "VOX_TOKEN_ACME" in message
    assert "acme" in message
    assert "\n" not in message


# -- overrides ----------------------------------------------------------------------------------


def test_etl_database_url_beats_the_file(write):
    path = write('[database]\nurl = "sqlite:///from-file.db"\n' + ACCOUNT)
    config = load(path, {"ETL_DATABASE_URL": "sqlite:///from-env.db"})
    assert config.database_url == "sqlite:///from-env.db"


def test_database_url_argument_beats_environment_and_file(write):
    path = write('[database]\nurl = "sqlite:///from-file.db"\n' + ACCOUNT)
    config = load(path, {"ETL_DATABASE_URL": "sqlite:///from-env.db"},
                  database_url="sqlite:///from-flag.db")
    assert config.database_url == "sqlite:///from-flag.db"


def test_database_url_argument_applies_without_a_file_key(write):
    config = load(write(ACCOUNT), database_url="sqlite:///from-flag.db")
    assert config.database_url == "sqlite:///from-flag.db"


def test_blank_environment_override_is_ignored(write):
    path = write('[database]\nurl = "sqlite:///from-file.db"\n[api]\ntimeout = 9\n' + ACCOUNT)
    config = load(path, {"ETL_DATABASE_URL": "  ", "ETL_API_TIMEOUT": ""})
    assert config.database_url == "sqlite:///from-file.db"
    assert config.api.timeout == 9.0


def test_api_and_sync_environment_overrides_beat_the_file(write):
    path = write("""
        [api]
        timeout = 30
        max_attempts = 8
        concurrency = 4
        base_url = "https://api.tryvox.io/v1"

        [sync]
        lookback = "15m"
    """ + ACCOUNT)
    config = load(path, {
        "ETL_API_TIMEOUT": "5",
        "ETL_API_MAX_ATTEMPTS": "3",
        "ETL_API_CONCURRENCY": "2",
        "ETL_API_BASE_URL": "http://127.0.0.1:8080/v1",
        "ETL_API_REQUESTS_PER_SECOND": "2.5",
        "ETL_SYNC_LOOKBACK": "1h",
        "ETL_SYNC_START_DATE": "2024-06-01",
    })
    assert config.api.timeout == 5.0
    assert config.api.max_attempts == 3
    assert config.api.concurrency == 2
    assert config.api.base_url == "http://127.0.0.1:8080/v1"
    assert config.api.requests_per_second == 2.5
    assert config.sync.lookback == timedelta(hours=1)
    assert config.sync.start_date == datetime(2024, 6, 1, tzinfo=UTC)


def test_bad_environment_override_is_a_config_error_naming_the_key(write):
    message = config_error(write(ACCOUNT), {"ETL_API_TIMEOUT": "fast"})
    assert "timeout" in message


def test_overrides_apply_without_a_file_when_not_required(tmp_path):
    config = load(tmp_path / "absent.toml", {"ETL_DATABASE_URL": "sqlite:///env.db"},
                  require_file=False)
    assert config.database_url == "sqlite:///env.db"


# -- selecting accounts --------------------------------------------------------------------------


def test_select_with_no_names_is_every_account(write):
    config = load(write(FULL))
    assert [a.name for a in config.select([])] == ["acme", "globex"]


def test_select_keeps_configuration_order(write):
    config = load(write(FULL))
    assert [a.name for a in config.select(("globex", "acme"))] == ["acme", "globex"]
    assert [a.name for a in config.select(["globex"])] == ["globex"]


def test_select_with_an_unknown_name_is_an_error_naming_it(write):
    config = load(write(FULL))
    with pytest.raises(ConfigError) as info:
        config.select(["acme", "initech"])
    message = str(info.value)
    assert "initech" in message
    assert "acme" in message and "globex" in message  # what is configured
    assert "\n" not in message


def test_select_on_a_config_without_accounts_says_none_are_configured():
    with pytest.raises(ConfigError, match="none"):
        Config().select(["acme"])
