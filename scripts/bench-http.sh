#!/usr/bin/env bash
# GET-hit throughput of cache-manager against nginx serving the same bytes as static
# files, measured with wrk in one run on this machine, and printed as ratios.
#
#   scripts/bench-http.sh [DURATION] [CONNECTIONS] [ROUNDS]    (defaults: 10s, 64, 3)
#
# 10,000 keys with 100-byte values; every request picks a key at random. cache-manager
# is measured in raw mode (Accept: application/octet-stream: exactly the 100 bytes, as
# nginx sends) with both read paths (CACHE_READ_PATH=direct and hop), and in JSON mode
# (the original API's envelope). All servers run side by side (idle ones cost nothing);
# each round runs wrk once against each of them in turn, and the table reports the
# median of the rounds, so drift on a noisy machine hits every server alike. Installs
# wrk and nginx from the OS packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bench_args "$@"

install_missing wrk:wrk nginx:nginx
cargo build --release -q -p net -p bench-harness
make_files "$keys" 100

cat > "$work/get.lua" <<LUA
wrk.headers["Accept"] = os.getenv("BENCH_ACCEPT") or "*/*"
request = function()
  return wrk.format("GET", "/api/cache/key:" .. math.random(0, $keys - 1))
end
LUA

run_wrk() { # url accept -> requests/s
    BENCH_ACCEPT="$2" wrk -t2 -c"$connections" -d"$duration" -s "$work/get.lua" "$1" > "$work/wrk.out"
    grep -q "Non-2xx" "$work/wrk.out" && { echo "wrk saw errors:" >&2; cat "$work/wrk.out" >&2; exit 1; }
    awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "wrk -t2 -c$connections -d$duration, $keys keys, 100-byte values, random keys, median of $rounds rounds"

declare -A url accept results
start_nginx
url[nginx]="http://127.0.0.1:$port"; accept[nginx]="*/*"
for path in direct hop; do
    start_cache_manager CACHE_READ_PATH="$path"
    prefill "$port" "$keys" 100
    url[$path]="http://127.0.0.1:$port"; accept[$path]="application/octet-stream"
done
url[json]="${url[direct]}"; accept[json]="application/json"

servers=(nginx direct hop json)
for round in $(seq 1 "$rounds"); do
    for server in "${servers[@]}"; do
        results[$server]+="$(run_wrk "${url[$server]}" "${accept[$server]}") "
    done
    show_round "$round" "${servers[@]}"
done

median_table "vs nginx" nginx over "nginx:nginx (static files)" "direct:cache-manager raw, CACHE_READ_PATH=direct" \
    "hop:cache-manager raw, CACHE_READ_PATH=hop" "json:cache-manager JSON envelope, direct"
