#!/usr/bin/env bash
# scripts/instructions.sh [REQUESTS] — the service's user-space instructions per GET hit,
# counted by callgrind (issue 16): the wall clock of this VM moves by ±10 % between runs,
# while an instruction count is the same for the same binary and requests, so this is
# how a cut in parsing, routing, rendering or the runtime is seen before it is timed.
#
# The release binary (CACHE_CORES=1) runs under `valgrind --tool=callgrind`; 10,000 keys
# with 100-byte values are PUT, the counters are zeroed after a warm-up, then REQUESTS
# (default 20,000) raw GETs (`Accept: application/octet-stream`, as in syscalls.sh) go
# over one connection (`cache-bench ping`) and the counters are dumped. Reported: all
# user-space instructions of the process over the requests, and the same less the
# once-a-second history sampler (its share depends on how long the slow run takes, not
# on the requests). The kernel's side is not counted (see syscalls.sh for that). The
# dump and a per-function summary go to target/instructions/. Installs valgrind if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

requests="${1:-20000}"
out=target/instructions
install_missing valgrind:valgrind
cargo build --release -q -p net -p bench-harness
rm -rf "$out"
mkdir -p "$out"

port=$(free_port)
env CACHE_LISTEN="127.0.0.1:$port" CACHE_CORES=1 CACHE_L1_MAX_ENTRIES=20000 RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
    target/release/cache-manager > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
wait_port "$port" 60 # starting under valgrind is slow
prefill "$port" 10000 100
target/release/cache-bench ping --addr "127.0.0.1:$port" --keys 10000 --requests 2000 --warmup 0 > /dev/null
callgrind_control -z "$server" > /dev/null
target/release/cache-bench ping --addr "127.0.0.1:$port" --keys 10000 --requests "$requests" --warmup 0 \
    > "$out/ping.txt"
callgrind_control -d "$server" > /dev/null
kill -INT "$server"
wait "$server" || true

dump=$(ls "$out"/callgrind.*.1)
callgrind_annotate --threshold=100 --inclusive=no "$dump" > "$out/exclusive.txt" 2>/dev/null
callgrind_annotate --threshold=100 --inclusive=yes "$dump" > "$out/inclusive.txt" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out/exclusive.txt")
sampler=$(awk '/net\/src\/stats.rs:monoio::task::/ {gsub(",", "", $1); print $1; exit}' \
    "$out/inclusive.txt")
awk -v t="$total" -v s="${sampler:-0}" -v n="$requests" 'BEGIN {
    printf "user-space instructions per GET hit, one connection, %d requests: %.0f\n", n, t / n
    printf "less the history sampler (%d in all): %.0f\n", s, (t - s) / n
}'
echo "per function: $out/exclusive.txt and $out/inclusive.txt"
