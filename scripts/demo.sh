#!/usr/bin/env bash
# The demo: a local Vox API simulator -> `etl sync` -> ./demo.db (SQLite), then `etl status`.
set -euo pipefail
BIN=${BIN:-.venv/bin}
workdir=$(mktemp -d)
sim_pid=""
cleanup() {
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; fi
    rm -rf "$workdir"
}
trap cleanup EXIT

rm -rf demo.db demo.db-wal demo.db-shm demo.db.locks
echo "==> starting the Vox API simulator (3 accounts, 20,000 calls each over 30 days, a 29-day window that"
echo "    also drops 20 of its oldest calls a second, 20 new calls a second, a few listed late, 2% server errors)"
"$BIN/etl" --database-url sqlite:///demo.db simulate --port 0 --accounts 3 --calls 20000 --error-rate 0.02 \
    --drift-rate 20 --retention-days 29 --expire-rate 20 --late-rate 0.2 --late-max-age 2d --finish-after 5 \
    --write-config demo.toml >"$workdir/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 1 300); do
    grep -q "listening on" "$workdir/sim.log" 2>/dev/null && [ -f demo.toml ] && break
    kill -0 "$sim_pid" 2>/dev/null || { cat "$workdir/sim.log"; exit 1; }
    sleep 0.1
done
head -1 "$workdir/sim.log"
# the simulator prints its demo tokens as `export` lines; real tokens come from your environment
eval "$(grep -E '^ *export VOX_TOKEN_' "$workdir/sim.log")"

echo
echo "==> etl --config demo.toml sync      (first run: the whole history)"
"$BIN/etl" --config demo.toml sync --jobs 3
echo
sleep 2
echo "==> etl --config demo.toml sync      (second run, two seconds later: only what is new or still open)"
"$BIN/etl" --config demo.toml sync --jobs 3
echo
echo "==> etl --config demo.toml status      (window from: the oldest call the provider still lists)"
"$BIN/etl" --config demo.toml status
echo
echo "==> calls per account and status in ./demo.db"
"$BIN/python" - <<'PY'
import sqlite3
db = sqlite3.connect("demo.db")
rows = db.execute(
    "SELECT account_id, status, count(*) FROM calls GROUP BY 1, 2 ORDER BY 1, 3 DESC"
).fetchall()
print(f"{'account_id':<12}{'status':<14}{'calls':>8}")
for account, status, n in rows:
    print(f"{account:<12}{status:<14}{n:>8,}")
PY
echo
echo "Done. Query it yourself:  $BIN/python -c \"import sqlite3; print(sqlite3.connect('demo.db').execute('select count(*) from calls').fetchone())\""
