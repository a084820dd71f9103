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
# wrk, nginx and python3 from the OS packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10s}"
connections="${2:-64}"
rounds="${3:-3}"
keys=10000

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p net --bin cache-manager
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

value=$(head -c 100 /dev/zero | tr '\0' 'v')
mkdir -p "$work/www/api/cache"
for i in $(seq 0 $((keys - 1))); do printf '%s' "$value" > "$work/www/api/cache/key:$i"; done
chmod -R a+rX "$work"  # nginx workers run unprivileged

cat > "$work/get.lua" <<LUA
local keys = $keys
wrk.headers["Accept"] = os.getenv("BENCH_ACCEPT") or "*/*"
request = function()
  return wrk.format("GET", "/api/cache/key:" .. math.random(0, keys - 1))
end
LUA

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=20000;
  server {
    listen 127.0.0.1:PORT reuseport;
    root $work/www;
    default_type application/octet-stream;
  }
}
NGINX

run_wrk() { # url accept -> requests/s
    BENCH_ACCEPT="$2" wrk -t2 -c"$connections" -d"$duration" -s "$work/get.lua" "$1" > "$work/wrk.out"
    grep -q "Non-2xx" "$work/wrk.out" && { echo "wrk saw errors:" >&2; cat "$work/wrk.out" >&2; exit 1; }
    awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}

start_cache_manager() { # read_path; sets $port
    port=$(free_port)
    CACHE_LISTEN="127.0.0.1:$port" CACHE_READ_PATH="$1" CACHE_L1_MAX_ENTRIES=20000 RUST_LOG=warn \
        target/release/cache-manager > "$work/cm-$1.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    python3 - "$port" "$keys" "$value" <<'PY'
import socket, sys
port, keys, value = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
s = socket.create_connection(("127.0.0.1", port))
batch = b"".join(
    b"PUT /api/cache/key:%d HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (i, len(value), value)
    for i in range(keys))
s.sendall(batch)
buf = b""
while buf.count(b"HTTP/1.1 200") < keys:
    chunk = s.recv(1 << 20)
    if not chunk: sys.exit("connection closed during prefill")
    buf += chunk
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "wrk -t2 -c$connections -d$duration, $keys keys, 100-byte values, random keys, median of $rounds rounds"

port=$(free_port)
sed "s/PORT/$port/" "$work/nginx.conf" > "$work/nginx-run.conf"
"$nginx_bin" -c "$work/nginx-run.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$port"
declare -A url accept results
url[nginx]="http://127.0.0.1:$port"; accept[nginx]="*/*"
for path in direct hop; do
    start_cache_manager "$path"
    url[$path]="http://127.0.0.1:$port"; accept[$path]="application/octet-stream"
done
url[json]="${url[direct]}"; accept[json]="application/json"

servers=(nginx direct hop json)
for round in $(seq 1 "$rounds"); do
    for server in "${servers[@]}"; do
        results[$server]+="$(run_wrk "${url[$server]}" "${accept[$server]}") "
    done
    echo "round $round: $(for s in "${servers[@]}"; do printf '%s=%s ' "$s" "$(echo "${results[$s]}" | awk '{print $NF}')"; done)"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
nginx_rps=$(echo "${results[nginx]}" | median)
printf '\n%-44s %12s %10s\n' "server (median of $rounds)" "requests/s" "vs nginx"
for row in "nginx:nginx (static files)" "direct:cache-manager raw, CACHE_READ_PATH=direct" "hop:cache-manager raw, CACHE_READ_PATH=hop" "json:cache-manager JSON envelope, direct"; do
    key=${row%%:*}; label=${row#*:}
    value=$(echo "${results[$key]}" | median)
    printf '%-44s %12.0f %10.2f\n' "$label" "$value" "$(awk -v a="$value" -v b="$nginx_rps" 'BEGIN {print a / b}')"
done
