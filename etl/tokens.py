"""Where an account's API token is read from: the environment variable named after it."""

from __future__ import annotations

import re


def token_variable(name: str) -> str:
    """`VOX_TOKEN_<NAME>`: the account name upper-cased, every other character as `_`
    (`acme-eu` -> `VOX_TOKEN_ACME_EU`)."""
    return "VOX_TOKEN_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
