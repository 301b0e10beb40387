#!/usr/bin/env bash
# Runs `npm start` as the README says, with no DATABASE_URL: the api must come up on an embedded
# PostgreSQL, answer /health/live and /items, and exit 0 on SIGTERM.
set -euo pipefail
port="${SMOKE_PORT:-3917}"
log="$(mktemp)"
env -u DATABASE_URL PORT="$port" setsid npm start >"$log" 2>&1 &
pid=$!
cleanup() { kill -TERM -- "-$pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 120); do
  grep -q "API listening on http://localhost:$port" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "smoke: npm start exited early"; exit 1; }
  sleep 0.5
done
grep -q "API listening on http://localhost:$port" "$log" || { cat "$log"; echo "smoke: npm start did not listen"; exit 1; }
curl -fsS "http://127.0.0.1:$port/health/live" | grep -q '"status":"ok"'
curl -fsS -X POST "http://127.0.0.1:$port/items" -H 'content-type: application/json' -d '{"name":"smoke"}' | grep -q '"name":"smoke"'
# SIGTERM to the api process, as an orchestrator sends it; with-db and npm pass its exit code on.
pkill -TERM -f "^node apps/api/dist/main.js"
code=0
wait "$pid" || code=$?
trap - EXIT
grep -q "embedded PostgreSQL" "$log" || { cat "$log"; echo "smoke: no embedded PostgreSQL was started"; exit 1; }
if [ "$code" -ne 0 ]; then cat "$log"; echo "smoke: npm start exited with $code after SIGTERM"; exit 1; fi
echo "smoke: npm start OK (embedded PostgreSQL, /health/live, POST /items, clean exit)"
