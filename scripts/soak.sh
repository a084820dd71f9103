#!/usr/bin/env bash
# A long mixed load against cache-manager, sampling its memory and latency.
#
#   scripts/soak.sh [MINUTES] [OUT_DIR]        (defaults: 10, soak-<date>)
#
# The service runs with CACHE_L1_MAX_BYTES=64 MiB, a 20 s default TTL and a 5 s sweep.
# cache-bench drives it open loop at 20,000 req/s from 32 connections: 80 % GETs over
# 500,000 Zipf-distributed keys (far more than fit, so CLOCK evicts all the time) and
# 20 % PUTs of 100 to 4,000 bytes with a 20 s TTL (so entries expire too). Every 5 s a
# pattern invalidation removes a slice of the keys. Every 10 s the script samples the
# server's RSS, L1 bytes and entries, evictions and expirations into samples.csv; the
# per-second p99 comes from cache-bench's own windows (load.json). The summary checks
# that RSS stayed within 2x CACHE_L1_MAX_BYTES plus 64 MiB, and compares the p99 of the
# first and last minutes. Installs python3 if missing (for the summary).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
minutes="${1:-10}"
out="${2:-soak-$(date -u +%Y%m%dT%H%M%SZ)}"
max_bytes=$((64 << 20))
mkdir -p "$out"

install_missing python3:python3
cargo build --release -q -p net -p bench-harness
start_cache_manager CACHE_L1_MAX_BYTES="$max_bytes" CACHE_L1_MAX_ENTRIES=1000000 CACHE_DEFAULT_TTL=20 CACHE_CLEANUP_INTERVAL=5
server_pid=${pids[-1]}
url="http://127.0.0.1:$port"
echo "soak: ${minutes} min against $url (pid $server_pid), results in $out"

target/release/cache-bench load --target "$url" --rate 20000 --connections 32 --threads 1 \
    --duration "${minutes}m" --warmup 5s --keys 500000 --distribution zipf:0.9 --read-ratio 0.8 \
    --value-size 100-4000 --ttl 20 --quiet --json "$out/load.json" --hgrm "$out/load.hgrm" \
    --plot "$out/latency.svg" > "$out/load.txt" &
load_pid=$!

(
    i=0
    while kill -0 "$load_pid" 2>/dev/null; do
        curl -s -X POST "$url/api/cache/invalidate" -H 'Content-Type: application/json' \
            -d "{\"pattern\": \"key:$((i % 10))*7\"}" > /dev/null || true
        i=$((i + 1))
        sleep 5
    done
) &
pids+=($!)

echo "seconds,rss_bytes,l1_bytes,l1_entries,evictions,expirations,deletes" > "$out/samples.csv"
started=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
    sleep 10
    kill -0 "$load_pid" 2>/dev/null || break
    rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$server_pid/status")
    metrics=$(curl -s "$url/api/cache/metrics")
    python3 - "$metrics" "$(( $(date +%s) - started ))" "$rss" >> "$out/samples.csv" <<'PY'
import json, sys
m, t, rss = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
print(",".join(str(x) for x in [t, rss, m["l1_bytes"], m["l1_size"], m["evictions"], m["expirations"], m["deletes"]]))
PY
    tail -1 "$out/samples.csv"
done
wait "$load_pid"

python3 - "$out" "$max_bytes" <<'PY' | tee "$out/summary.txt"
import csv, json, sys
out, max_bytes = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
load = json.load(open(f"{out}/load.json"))
rss = [int(r["rss_bytes"]) for r in rows]
limit = 2 * max_bytes + (64 << 20)
windows = [w for w in load["windows"] if w["second"] > 5]
first = sorted(w["p99_us"] for w in windows[:60])
last = sorted(w["p99_us"] for w in windows[-60:])
median = lambda xs: xs[len(xs) // 2] if xs else 0
print(f"duration: {len(windows)} s measured, {load['throughput_rps']:.0f} req/s, errors {load['errors']}, hit ratio {load['hit_ratio']:.3f}")
print(f"RSS: max {max(rss) / 2**20:.1f} MiB, last {rss[-1] / 2**20:.1f} MiB; limit 2 x {max_bytes / 2**20:.0f} MiB + 64 MiB = {limit / 2**20:.0f} MiB: {'ok' if max(rss) <= limit else 'EXCEEDED'}")
print(f"L1 bytes: max {max(int(r['l1_bytes']) for r in rows) / 2**20:.1f} MiB of {max_bytes / 2**20:.0f} MiB; evictions {rows[-1]['evictions']}, expirations {rows[-1]['expirations']}, deletes {rows[-1]['deletes']}")
print(f"p99 per second: median of the first minute {median(first)} us, of the last minute {median(last)} us; whole run p99 {load['p99_us']} us, p99.9 {load['p999_us']} us")
PY
