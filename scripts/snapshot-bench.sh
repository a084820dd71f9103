#!/usr/bin/env bash
# scripts/snapshot-bench.sh [KEYS] [VALUE_BYTES] [ROUNDS] — how fast a snapshot is saved
# on SIGTERM and loaded on start: the release binary fills L1 with KEYS entries of
# VALUE_BYTES (default 1,000,000 of 1,000 bytes: about 1 GiB of snapshot), stops, starts
# again from the snapshot, ROUNDS times (default 3). Reports each round's save and load
# (MiB/s of snapshot file, as the service logs them) and the medians, beside the disk's
# own speed: `dd` reading the same file in 1 MiB requests. Loads and dd read from a cold
# page cache when this machine lets the script drop it (root), else the lines say so.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

keys="${1:-1000000}"
value_bytes="${2:-1000}"
rounds="${3:-3}"
cargo build --release -q -p net -p bench-harness
snapshot="$work/cache.snap"
bound_bytes=$((keys * (value_bytes + 400)))
field() { grep "\"message\":\"$2\"" "$1" | tail -n1 | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['fields']['$3'])"; }
run() {
    start_cache_manager CACHE_L1_MAX_ENTRIES=$((keys + keys / 10)) CACHE_L1_MAX_BYTES="$bound_bytes" \
        CACHE_SNAPSHOT_PATH="$snapshot" CACHE_LOG_FORMAT=json RUST_LOG=info
    log="$work/cache-manager-$port.log"
}
stop() { kill -TERM "${pids[-1]}"; wait "${pids[-1]}" || true; unset 'pids[-1]'; }

saves=() loads=() load_ms=() disks=()
for round in $(seq 1 "$rounds"); do
    rm -f "$snapshot"
    run
    prefill "$port" "$keys" "$value_bytes"
    stop
    save_rate=$(field "$log" "snapshot saved" mib_per_s)
    bytes=$(field "$log" "snapshot saved" bytes)
    entries=$(field "$log" "snapshot saved" entries)
    cache="page cache warm"
    if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then cache="page cache dropped"; fi
    run
    load_rate=$(field "$log" "snapshot loaded" mib_per_s)
    ms=$(field "$log" "snapshot loaded" ms)
    in_l1=$(field "$log" "snapshot loaded" in_l1)
    stop
    sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    disk=$(dd if="$snapshot" of=/dev/null bs=1M 2>&1 | awk '/copied/ {printf "%d", $(NF-1) * ($NF == "GB/s" ? 1000 : 1) * 1e6 / 1048576}')
    echo "round $round: $entries entries, $((bytes >> 20)) MiB; saved at $save_rate MiB/s; loaded $in_l1 in $ms ms, $load_rate MiB/s; dd reads the file at $disk MiB/s ($cache)"
    saves+=("$save_rate") loads+=("$load_rate") load_ms+=("$ms") disks+=("$disk")
done
echo "median of $rounds rounds: save $(echo "${saves[*]}" | median) MiB/s, load $(echo "${loads[*]}" | median) MiB/s ($(echo "${load_ms[*]}" | median) ms), dd $(echo "${disks[*]}" | median) MiB/s"
