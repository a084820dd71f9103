#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against a live cache-manager for a bounded time:
#     scripts/api-fuzz.sh [SECONDS]      (default 300)
#
# Starts a release cache-manager with a redis-server as L2 and a second cache-manager
# as its origin (all on free loopback ports), generates requests from openapi.yaml for every operation (examples, coverage,
# fuzzing and stateful phases), and runs every schemathesis check: no 5xx, statuses,
# content types, headers and bodies as the spec says, 405 with Allow for other
# methods, and so on; scripts/schemathesis.toml says which statuses a schema-valid
# request may get besides 2xx (a key over 250 bytes of UTF-8, which JSON Schema counts
# in characters, is a 414). schemathesis is installed into target/api-fuzz-venv-PYTHON on first use.
# The report goes to target/api-fuzz/. Exits non-zero on any failure. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${1:-300}
install_missing redis-server:redis-server python3:python3 python3:python3-venv
# CPython 3.11's ast.parse fails on schemathesis's own source in its coverage phase
# ("SystemError: AST constructor recursion depth mismatch"), so a newer Python is
# used when there is one (PYTHON=/path/to/python3.13 to choose), and with 3.11 the
# coverage phase is left out.
if [ -z "${PYTHON:-}" ]; then
    for PYTHON in python3.13 python3.12 python3; do
        "$PYTHON" -c 'import venv' >/dev/null 2>&1 && break
    done
fi
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
phases=examples,coverage,fuzzing,stateful
if [ "$version" = 3.11 ]; then
    phases=examples,fuzzing,stateful
    echo "scripts/api-fuzz.sh: Python 3.11, so without schemathesis's coverage phase (set PYTHON to a 3.12+ to run it)"
fi
venv=target/api-fuzz-venv-$version
if [ ! -x "$venv/bin/st" ]; then
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q schemathesis
fi

cargo build --release -q -p net
start_redis
redis_port=$port
origin_port=$(free_port)
CACHE_LISTEN=127.0.0.1:$origin_port RUST_LOG=warn target/release/cache-manager &
pids+=($!)
wait_port "$origin_port"
port=$(free_port)
CACHE_LISTEN=127.0.0.1:$port REDIS_URL=redis://127.0.0.1:$redis_port RUST_LOG=warn \
    ORIGIN_URL="http://127.0.0.1:$origin_port/api/cache/{key}" target/release/cache-manager &
pids+=($!)
wait_port "$port"

report=target/api-fuzz
mkdir -p "$report"
echo "scripts/api-fuzz.sh: schemathesis $("$venv/bin/st" --version | awk '{print $NF}') for ${seconds}s against 127.0.0.1:$port"
status=0
"$venv/bin/st" --config-file scripts/schemathesis.toml run openapi.yaml --url "http://127.0.0.1:$port" \
    --phases "$phases" --checks all --max-time "$seconds" --workers 2 --continue-on-failure \
    --report junit --report-dir "$report" "${@:2}" || status=$?
echo "scripts/api-fuzz.sh: exit status $status; report in $report/"
exit "$status"
