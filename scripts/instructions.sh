#!/usr/bin/env bash
# scripts/instructions.sh [REQUESTS] [SECONDS] — the service's user-space instructions per
# GET hit, counted by callgrind (issue 16): the wall clock of this VM moves by ±10 %
# between runs, while an instruction count is close to the same for the same binary and
# load, so this is how a cut in parsing, routing, rendering or the runtime is seen
# before it is timed.
#
# The release binary (CACHE_CORES=1, CACHE_IDLE_SPIN_US=0 unless set: a watching core's
# instructions depend on how long it waits, not on the requests) runs under
# `valgrind --tool=callgrind`; 10,000 keys with 100-byte values are PUT, then two loads
# are counted, each from zeroed counters: REQUESTS (default 20,000) raw GETs over one
# connection (`cache-bench ping`, `Accept: application/octet-stream` as in syscalls.sh),
# and SECONDS (default 10) of `cache-bench load` over 64 connections. Reported per load:
# all user-space instructions of the process per request, the same less the
# once-a-second history sampler, and the executor's task polls per request. At one
# connection the polls depend on timing: under valgrind the server is slow enough that
# the client's next request may already be in when it reaps its send, which saves a
# poll (1 to 2 a request); under 64 connections the server is always behind, and the
# count is steady (runs repeat to within about 0.3 %). The kernel's side is not counted (see
# syscalls.sh for that). The dumps and per-function summaries go to
# target/instructions/. Installs valgrind if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

requests="${1:-20000}"
load_seconds="${2:-10}s"
out=target/instructions
install_missing valgrind:valgrind
cargo build --release -q -p net -p bench-harness
rm -rf "$out"
mkdir -p "$out"

port=$(free_port)
env CACHE_LISTEN="127.0.0.1:$port" CACHE_CORES=1 CACHE_IDLE_SPIN_US="${CACHE_IDLE_SPIN_US:-0}" CACHE_L1_MAX_ENTRIES=20000 RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
    target/release/cache-manager > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
wait_port "$port" 60 # starting under valgrind is slow
prefill "$port" 10000 100
target/release/cache-bench ping --addr "127.0.0.1:$port" --keys 10000 --requests 2000 --warmup 0 > /dev/null
# count NAME REQUESTS LOAD... — zeroes the counters, runs the load, dumps them (the next
# callgrind part) and reports that part per request.
count() {
    local name=$1 n=$2 part
    shift 2
    callgrind_control -z "$server" > /dev/null
    "$@" > "$out/$name.txt"
    callgrind_control -d "$server" > /dev/null
    parts=$((parts + 1))
    part=$(ls "$out"/callgrind.*."$parts")
    [ "$n" = json ] && n=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['requests'])" "$out/$name.json")
    callgrind_annotate --threshold=100 --inclusive=no "$part" > "$out/$name-exclusive.txt" 2>/dev/null
    callgrind_annotate --threshold=100 --inclusive=yes "$part" > "$out/$name-inclusive.txt" 2>/dev/null
    local total sampler polls
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out/$name-exclusive.txt")
    sampler=$(awk '/net\/src\/stats.rs:monoio::task::/ {gsub(",", "", $1); print $1; exit}' \
        "$out/$name-inclusive.txt")
    polls=$(grep -m1 -o 'monoio::task::raw::poll ([0-9,]*x)' "$out/$name-inclusive.txt" | tr -dc '0-9')
    awk -v name="$name" -v t="$total" -v s="${sampler:-0}" -v n="$n" -v p="${polls:-0}" 'BEGIN {
        printf "%s, %d requests: %.0f user-space instructions per GET hit, %.0f less the history sampler; %.2f task polls per request\n", name, n, t / n, (t - s) / n, p / n
    }'
}
parts=0
count one-connection "$requests" target/release/cache-bench ping --addr "127.0.0.1:$port" \
    --keys 10000 --requests "$requests" --warmup 0
count 64-connections json target/release/cache-bench load --target "http://127.0.0.1:$port" \
    --connections 64 --duration "$load_seconds" --warmup 0s --keys 10000 --quiet \
    --json "$out/64-connections.json"
# Under valgrind the drain can outlast the patience of a script: the counts are dumped.
kill -INT "$server"
for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
kill -9 "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
echo "per function: $out/*-exclusive.txt and $out/*-inclusive.txt"
