#!/usr/bin/env bash
# cache-manager against its peers on this machine, in one run, at the same concurrency:
# nginx (static files with the same bytes), Varnish (cached hits, in front of that nginx)
# and Redis (GET of the same keys over RESP). Prints each rate and cache-manager's ratio to
# each, and checks the load generator itself against wrk (cache-bench must reach at
# least 0.9x wrk's rate on the same server and keys).
#
#   scripts/compare-peers.sh [DURATION] [CONNECTIONS] [ROUNDS]    (defaults: 10s, 64, 3)
#
# Every server is driven by the same client, `cache-bench load` (closed loop, 1 thread,
# CONNECTIONS connections, 10,000 keys, 100-byte values, random keys), over HTTP or, for
# Redis, RESP: redis-benchmark saturates its core before Redis does, so its figure would
# compare load tools (BENCHMARKS.md, "Runs 11 to 13"). Each round measures every server once; the
# table shows medians. SERVER_CORES=N gives cache-manager N cores (CACHE_CORES) and nginx
# N workers (default: all cores); cache-bench pins itself from the last core down, so
# SERVER_CORES=1 on a 2-core machine puts the server and the load on separate cores.
# Installs nginx, varnish, redis-server and wrk from the OS packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bench_args "$@"
server_cores="${SERVER_CORES:-$(nproc)}"

install_missing nginx:nginx varnishd:varnish redis-server:redis-server wrk:wrk
cargo build --release -q -p net -p bench-harness
make_files "$keys" 100

bench() { # url (http:// or redis://) -> requests/s (cache-bench, closed loop)
    target/release/cache-bench load --target "$1" --connections "$connections" --threads 1 \
        --duration "$duration" --warmup 2s --keys "$keys" --quiet --json "$work/run.json" > /dev/null
    awk -F: '/"throughput_rps"/ {gsub(/[ ,]/, "", $2); print $2}' "$work/run.json"
}

cat > "$work/get.lua" <<LUA
wrk.headers["Accept"] = "application/octet-stream"
request = function() return wrk.format("GET", "/api/cache/key:" .. math.random(0, $keys - 1)) end
LUA

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "$connections connections, $keys keys, 100-byte values, random keys, $duration per measurement, median of $rounds rounds, $server_cores server core(s)"

declare -A url results
start_cache_manager CACHE_CORES="$server_cores"
prefill "$port" "$keys" 100
url[cache-manager]="http://127.0.0.1:$port"

start_nginx "$server_cores"
url[nginx]="http://127.0.0.1:$port"
nginx_port=$port

port=$(free_port)
mkdir -p "$work/varnish"
varnishd -F -n "$work/varnish" -a "127.0.0.1:$port" -b "127.0.0.1:$nginx_port" -s malloc,256m \
    -p default_ttl=3600 > "$work/varnish.log" 2>&1 &
pids+=($!)
wait_port "$port"
url[varnish]="http://127.0.0.1:$port"
# Warm Varnish: every key fetched once from nginx, so the measured requests are hits.
target/release/cache-bench load --target "${url[varnish]}" --connections 8 --duration 3s --warmup 0s \
    --keys "$keys" --quiet > /dev/null

start_redis
redis_port=$port
url[redis]="redis://127.0.0.1:$redis_port"
target/release/cache-bench load --target "${url[redis]}" --keys "$keys" --value-size 100 \
    --prefill --duration 1ms --warmup 0s --quiet > /dev/null

servers=(cache-manager nginx varnish redis)
for round in $(seq 1 "$rounds"); do
    for server in "${servers[@]}"; do
        results[$server]+="$(bench "${url[$server]}") "
    done
    results[wrk]+="$(wrk -t1 -c"$connections" -d"$duration" -s "$work/get.lua" "${url[cache-manager]}" | awk '/Requests\/sec/ {print $2}') "
    results[tool]+="$(bench "${url[cache-manager]}") "
    show_round "$round" cache-manager nginx varnish redis wrk tool
done

median_table "cache-manager vs it" cache-manager under "cache-manager:cache-manager (GET hit, raw bytes)" \
    "nginx:nginx 1.22 (static files)" "varnish:Varnish 7.1 (cached hits)" "redis:Redis 7.0 (GET over RESP)"
wrk_rps=$(echo "${results[wrk]}" | median)
tool_rps=$(echo "${results[tool]}" | median)
printf '\nload generator check against cache-manager, 1 thread, %s connections:\n' "$connections"
printf '  wrk -t1: %.0f req/s, cache-bench --threads 1: %.0f req/s, ratio %s (must be >= 0.9)\n' \
    "$wrk_rps" "$tool_rps" "$(ratio "$tool_rps" "$wrk_rps")"
