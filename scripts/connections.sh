#!/usr/bin/env bash
# scripts/connections.sh [SECONDS] [ROUNDS] [CONNECTIONS] — how CPU per GET hit and
# requests/s change with the number of open connections, for capacity planning:
# cache-manager (CACHE_CORES=1, its defaults otherwise), nginx (one worker, static files
# of the same bytes) and Redis, each pinned to core 0, all driven by one client
# (`cache-bench load`, closed loop, one thread pinned to core 1; HTTP, or RESP GETs of the
# same keys for Redis) at each count in CONNECTIONS (comma-separated, default
# 64,256,1000,2000,16new), 10,000 keys with 100-byte values. A count ending in `new`
# opens a new connection for every request, that many at a time (`--reconnect`: HTTP
# requests say `Connection: close`, and the client closes Redis's), as clients without
# keep-alive do.
#
# Each round (ROUNDS, default 5) visits every server at every count in a new random
# order, for SECONDS each (default 3): this VM's speed drifts over minutes, and a server
# measured in a slow phase against one in a fast phase is not a comparison. Printed per
# count: each server's CPU per request (utime + stime of all its threads over the
# requests) and requests/s, medians over rounds; how busy the load core was (near 100 %,
# a figure is the client's limit rather than the server's); and cache-manager's CPU per
# request over each peer's, the median of the per-round ratios. Before the rounds, while
# each server is fresh: its memory per idle connection, the growth of its resident
# memory (all its processes) while it holds IDLE_CONNECTIONS (default 2,000) connections
# that have each made one GET. Installs nginx and redis if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds="${1:-3}"
rounds="${2:-5}"
counts="${3:-64,256,1000,2000,16new}"
keys=10000
install_missing nginx:nginx redis-server:redis-server
cargo build --release -q -p net -p bench-harness
make_files "$keys" 100
# Every connection is a descriptor in the client and in the server. cache-manager,
# cache-bench and Redis raise their own soft limit; nginx does not.
ulimit -n "$(ulimit -Hn)"

declare -A target pid results
start_cache_manager --core 0 CACHE_CORES=1
target[cache-manager]="http://127.0.0.1:$port"
pid[cache-manager]=${pids[-1]}
prefill "$port" "$keys" 100

start_nginx 1
pin_nginx 0
target[nginx]="http://127.0.0.1:$port"
pid[nginx]=$(pgrep -P "$(cat "$work/nginx.pid")" | head -n1)

start_redis --core 0
target[redis]="redis://127.0.0.1:$port"
pid[redis]=${pids[-1]}
target/release/cache-bench load --target "${target[redis]}" --keys "$keys" --value-size 100 \
    --prefill --duration 1ms --warmup 0s --quiet > /dev/null

# idle_memory SERVER PID... -> KiB of resident memory per idle connection
idle_memory() {
    local server=$1
    shift
    python3 - "${target[$server]}" "${IDLE_CONNECTIONS:-2000}" "$@" <<'PY'
import socket, sys, time
target, n, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
scheme, address = target.split("://")
host, port = address.split(":")
if scheme == "redis":
    request, answer = b"*2\r\n$3\r\nGET\r\n$5\r\nkey:1\r\n", b"$"
else:
    request, answer = b"GET /api/cache/key:1 HTTP/1.1\r\nHost: t\r\nAccept: application/octet-stream\r\n\r\n", b"HTTP/1.1 200"
def resident():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total += next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))
    return total
before = resident()
held = [socket.create_connection((host, int(port))) for _ in range(n)]
for s in held:
    s.sendall(request)
for s in held:
    got = s.recv(4096)
    assert got.startswith(answer), got[:40]
time.sleep(0.5)
print(f"{(resident() - before) / n:.1f}")
PY
}

declare -A idle
idle[cache-manager]=$(idle_memory cache-manager "${pid[cache-manager]}")
idle[nginx]=$(idle_memory nginx "$(cat "$work/nginx.pid")" $(pgrep -P "$(cat "$work/nginx.pid")"))
idle[redis]=$(idle_memory redis "${pid[redis]}")

hz=$(getconf CLK_TCK)
servers=(cache-manager nginx redis)
runs=()
for server in "${servers[@]}"; do
    for connections in ${counts//,/ }; do runs+=("$server@$connections"); done
done
for round in $(seq 1 "$rounds"); do
    declare -A cpu_now=()
    for run in $(shuf -e "${runs[@]}"); do
        server=${run%@*} connections=${run#*@} reconnect=()
        [ "${connections%new}" = "$connections" ] || reconnect=(--reconnect)
        [ "$server" != cache-manager ] || watched=$(watched_us "${target[$server]}")
        before=$(cpu_ticks "${pid[$server]}")
        load_core=$(core_ticks 1)
        taskset -c 1 target/release/cache-bench load --target "${target[$server]}" \
            --connections "${connections%new}" "${reconnect[@]}" --threads 1 \
            --duration "${seconds}s" --warmup 0s --keys "$keys" --quiet --json "$work/run.json" > /dev/null
        after=$(cpu_ticks "${pid[$server]}")
        read -r requests rps errors < <(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(r["requests"], round(r["throughput_rps"]), r["errors"])' "$work/run.json")
        [ "$errors" = 0 ] || echo "$server at $connections connections: $errors errors" >&2
        cpu_now[$run]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
        results[$run-cpu]+="${cpu_now[$run]} "
        if [ "$server" = cache-manager ]; then
            results[$run-watched]+="$(awk -v a="$watched" -v b="$(watched_us "${target[$server]}")" -v n="$requests" 'BEGIN {printf "%.2f", (b - a) / n}') "
        fi
        results[$run-rps]+="$rps "
        results[$run-load]+="$(busy_share "$load_core" "$(core_ticks 1)") "
    done
    for connections in ${counts//,/ }; do
        for peer in nginx redis; do
            results[$connections-over-$peer]+="$(ratio "${cpu_now[cache-manager@$connections]}" "${cpu_now[$peer@$connections]}") "
        done
    done
    echo "round $round done"
done

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "each server on core 0, cache-bench load (closed loop) on core 1; medians of $rounds rounds of ${seconds}s"
echo "(a count ending in \"new\": that many requests at a time, each on a new connection)"
printf '%-11s %-14s %14s %12s %16s\n' connections server "CPU/req (µs)" "req/s" "load core busy"
for connections in ${counts//,/ }; do
    for server in "${servers[@]}"; do
        printf '%-11s %-14s %14s %12s %14s %%\n' "$connections" "$server" \
            "$(echo "${results[$server@$connections-cpu]}" | median)" \
            "$(echo "${results[$server@$connections-rps]}" | median)" \
            "$(echo "${results[$server@$connections-load]}" | median)"
    done
    echo "            cache-manager's CPU/req over Redis's $(echo "${results[$connections-over-redis]}" | median), over nginx's $(echo "${results[$connections-over-nginx]}" | median) (median per round);"
    echo "            of its CPU/req, $(echo "${results[cache-manager@$connections-watched]}" | median) µs was watching for work (idle_watch_us)"
done
echo "resident memory per idle connection (${IDLE_CONNECTIONS:-2000} held, each after one GET):" \
    "cache-manager ${idle[cache-manager]} KiB, nginx ${idle[nginx]} KiB, Redis ${idle[redis]} KiB"
