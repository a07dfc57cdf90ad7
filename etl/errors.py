"""The error classes the layers raise and the CLI turns into one-line messages and exit codes."""

from __future__ import annotations


class EtlError(Exception):
    """Base class: every error the tool reports to its user in one line."""


class ConfigError(EtlError):
    """Bad configuration or usage; exit code 2, raised before any request is made."""


class APIError(EtlError):
    """The API could not give an account's calls; that account fails (exit code 1)."""


class RetriableAPIError(APIError):
    """A failure worth retrying: 429, 5xx, a reset connection, a truncated or malformed body."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalAPIError(APIError):
    """A failure retrying cannot fix: 400, 401, 403, 404."""


class ListingError(APIError):
    """The API's listing contradicts itself (a call at two positions, pages that never settle)."""


class LockBusy(EtlError):
    """Another run holds this account's lock; exit code 75."""


def first_line(exc: BaseException) -> str:
    """An error in one line: the first non-blank line of its message, or its class name when
    it has none. A database error speaks through the driver's own exception (`orig`), which
    leaves out SQLAlchemy's statement and parameters (they may hold row values)."""
    orig = getattr(exc, "orig", None)
    source = orig if isinstance(orig, BaseException) else exc
    for line in str(source).splitlines():
        if line.strip():
            return line.strip()
    return type(source).__name__
