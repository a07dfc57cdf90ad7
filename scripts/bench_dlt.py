"""The dlt side of `scripts/bench.py`: the same job done by dlt's `rest_api` source.

Run by bench.py as its own process (so its time and peak memory are its own):

    python scripts/bench_dlt.py --base-url URL --account MA100001=VOX_TOKEN_ACCT1 ... \
        --destination sqlite:///PATH | postgresql+psycopg://... --workdir DIR

One resource per account (its own bearer token), `page`/`per_page=100` newest first until an
empty page, primary_key `call_uuid`, write_disposition `merge`, all into one `calls` table.
Prints one JSON line: rows stored, requests sent (and how many were answered 429), seconds,
the destination used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--account", action="append", required=True, metavar="AUTH_ID=TOKEN_ENV")
    parser.add_argument("--destination", required=True, help="SQLAlchemy URL")
    parser.add_argument("--workdir", required=True, help="dlt's pipelines dir lives here")
    parser.add_argument("--dataset", default="vox_dlt")
    args = parser.parse_args()

    # Nothing leaves the machine, and dlt keeps its state in the bench's temp dir.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)

    import dlt
    from dlt.sources.helpers.requests import Client
    from dlt.sources.rest_api import rest_api_source
    from requests.adapters import HTTPAdapter

    class CountingAdapter(HTTPAdapter):
        """Counts every request that goes on the wire, dlt's retries included."""

        sent = 0
        throttled = 0
        lock = threading.Lock()

        def send(self, *a: Any, **kw: Any) -> Any:
            response = super().send(*a, **kw)
            with CountingAdapter.lock:
                CountingAdapter.sent += 1
                if response.status_code == 429:
                    CountingAdapter.throttled += 1
            return response

    # dlt's own retrying session (as rest_api builds it), with a counting transport.
    session = Client(raise_for_status=False).session
    adapter = CountingAdapter(pool_maxsize=8)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    resources: list[dict[str, Any]] = []
    for spec in args.account:
        auth_id, _, token_env = spec.partition("=")
        token = os.environ.get(token_env, "")
        if not token:
            print(f"bench_dlt: environment variable {token_env} is not set", file=sys.stderr)
            return 2
        resources.append(
            {
                "name": f"calls_{auth_id.lower()}",
                "table_name": "calls",
                "endpoint": {
                    "path": f"voice/accounts/{auth_id}/calls",
                    "params": {"per_page": 100},
                    "data_selector": "calls",
                    "auth": {"type": "bearer", "token": token},
                },
            }
        )
    source = rest_api_source(
        {
            "client": {
                "base_url": args.base_url.rstrip("/") + "/",
                "session": session,
                "paginator": {
                    "type": "page_number",
                    "page_param": "page",
                    "base_page": 1,
                    "total_path": None,
                    "stop_after_empty_page": True,
                },
            },
            "resource_defaults": {
                "primary_key": "call_uuid",
                "write_disposition": "merge",
                # the accounts are read side by side, as `etl sync --jobs 2` does
                "parallelized": True,
            },
            "resources": resources,  # type: ignore[typeddict-item]
        }
    )

    url = args.destination
    if url.startswith("postgresql"):
        try:
            import psycopg2  # noqa: F401
            from sqlalchemy.engine import make_url

            parsed = make_url(url).set(drivername="postgresql")
            if parsed.password is None:
                # dlt's postgres destination insists on a password; a server with trust
                # authentication (the bench's) ignores whatever is given.
                parsed = parsed.set(password="unused")
            destination = dlt.destinations.postgres(
                credentials=parsed.render_as_string(hide_password=False))
            used = "postgres (psycopg2)"
        except ImportError:
            destination = dlt.destinations.sqlalchemy(credentials=url)
            used = "sqlalchemy (psycopg 3)"
    else:
        destination = dlt.destinations.sqlalchemy(credentials=url)
        used = "sqlalchemy"

    pipeline = dlt.pipeline(
        pipeline_name="vox_bench",
        pipelines_dir=str(workdir / "pipelines"),
        destination=destination,
        dataset_name=args.dataset,
        progress=None,
    )
    started = time.perf_counter()
    pipeline.run(source)
    seconds = time.perf_counter() - started
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name("calls")
        rows = client.execute_sql(f"SELECT count(*) FROM {table}")[0][0]
    print(json.dumps({"event": "dlt", "rows": rows, "requests": CountingAdapter.sent,
                      "throttled": CountingAdapter.throttled,
                      "seconds": round(seconds, 3), "destination": used}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
