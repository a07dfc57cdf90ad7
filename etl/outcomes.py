"""The words a run writes in the run log: what each account's run came to, and which command
ran. StrEnums, so they compare equal to (and are stored as) the same strings as always."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How one account's run ended (`sync_runs.outcome`, `etl status`, the summary line)."""

    RUNNING = "running"          # written when the run takes the lock; replaced when it ends
    OK = "ok"
    FAILED = "failed"            # the account failed; the others went on
    SKIPPED = "skipped"          # another run held the account's lock
    INTERRUPTED = "interrupted"  # stopped by a signal or the host; the batch in flight settled
    DIED = "died"                # a `running` row whose process vanished (see etl.state)


class Command(StrEnum):
    """The command a run log row belongs to (`sync_runs.command`)."""

    SYNC = "sync"
    BACKFILL = "backfill"
