"""A local Vox "List Calls" API over real HTTP that behaves like a real provider.

Standard library only. `Simulator(**SimulatorConfig fields)` generates seeded accounts and
serves `GET /v1/voice/accounts/{auth_id}/calls` (auth, the four filters, pagination, `per_page`
capped at 100) with the faults, rate limits and list dynamics of `SimulatorConfig`.

The list, as the provider keeps it:

- sorted by `start_time`, newest first; among calls sharing one second, the one listed later
  comes first (a call's place among its ties never changes, also across delete and restore);
- every page is a contiguous slice of that order at the moment it is answered, and its
  `total_count`/`total_pages` count the list at that moment;
- it changes at both ends: calls arrive at the head (`drift_rate`, `drift_per_request`,
  `add_calls`); with `retention_days` the calls older than the clock minus the window leave it,
  checked at every request and 20 times a second (`expire_rate`, `expire_oldest` move the
  tail regardless of the clock); calls vanish from inside it (`delete_call`, `delete_rate`) and
  may come back (`restore_call`); calls are listed late, behind the head (`add_late_call`,
  `late_rate`); many calls can share one second (`burst_size`, `burst_every`/`burst_calls`,
  `add_calls`).

The truth for tests: `listed_uuids`, `deleted`, `expired` (and `calls`, `open_calls`, `stats`,
`limit_stats`). Layout: `config` (settings), `generate` (records), `calllist` (the list and its
dynamics), `limits` (faults and rate limits), `account` (one account's state), `server` (HTTP),
`hooks` (the /_sim handlers), `service` (Simulator, serve).

Test hooks over HTTP, for a simulator in another process (`etl simulate`). They live beside
the API on the same port, outside `/v1`, answer loopback peers only (403 otherwise), are never
delayed, faulted, rate-limited or counted, and take and return JSON. Arguments go in the JSON
body (POST) or the query string (GET). Errors: 400 (bad argument), 404 (unknown hook, account
or call), 405 (wrong method), each `{"error", "message"}`.

    GET  /_sim/help                  the hook list
    GET  /_sim/accounts              {"accounts": [{name, auth_id, token, listed}]}
    GET  /_sim/config                {"config": {every SimulatorConfig field}}
    GET  /_sim/stats[?auth_id=]      stats() plus "limits": limit_stats() (by_status keys are
                                     strings)
    GET  /_sim/calls?auth_id=        {"calls": calls()}          (newest first)
    GET  /_sim/open-calls?auth_id=   {"calls": open_calls()}
    GET  /_sim/truth?auth_id=        {"listed": listed_uuids(), "deleted": deleted(),
                                      "expired": expired(), "oldest_start_time": ...}
    POST /_sim/reset-stats           {}
    POST /_sim/add-calls             {auth_id, n, open_fraction?, same_second?, spread_s?}
                                     -> {"calls"}
    POST /_sim/add-record            {auth_id, record} -> {}
    POST /_sim/late-call             {auth_id, age_seconds, fields?} -> {"call"}
    POST /_sim/set-call              {auth_id, call_uuid, fields} -> {}
    POST /_sim/delete                {auth_id, call_uuid} -> {"call"}
    POST /_sim/restore               {auth_id, call_uuid} -> {"call"}
    POST /_sim/expire                {auth_id, n} -> {"expired": [call_uuid, ...]}
    POST /_sim/finish-open-calls     {auth_id?} -> {"finished": n}
    POST /_sim/faults                {run-time field: value, ...} -> {"config"}
    POST /_sim/inject                {auth_id, responses: [429, "reset", ...]} -> {}
    POST /_sim/clock                 {seconds} -> {"offset_s"}   (advance_clock)
"""

from .config import SimAccount, SimulatorConfig
from .service import Simulator, serve

__all__ = ["SimAccount", "Simulator", "SimulatorConfig", "serve"]
