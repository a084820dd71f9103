# Shared by the benchmark scripts: installing tools, ports, starting the servers under
# test. Source it; it defines functions and the array `pids` (killed on exit).

pids=()
work=$(mktemp -d)
chmod a+rx "$work"  # nginx and varnish workers run unprivileged
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # Kernel threads keep_kthreads_off moved, "TID:MASK" a line; a file, not a variable,
    # so that a move made in a subshell is undone too.
    if [ -f "$work/moved-kthreads" ]; then
        while IFS=: read -r tid mask; do
            taskset -p "$mask" "$tid" > /dev/null 2>&1 || true
        done < "$work/moved-kthreads"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# install_missing COMMAND:PACKAGE ... — apt-get installs the packages whose command is missing.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# bench_args [DURATION] [CONNECTIONS] [ROUNDS] — the benchmark scripts' arguments, with
# their defaults (10s, 64, 3), and the key count they share.
bench_args() {
    duration="${1:-10s}"
    connections="${2:-64}"
    rounds="${3:-3}"
    keys=10000
}

# keep_kthreads_off CORE — moves every kernel thread allowed on all cores (kdamond,
# kswapd, khugepaged, ...) off CORE while the script runs, as `tuna isolate` does; cleanup
# puts each back. Per-core kernel threads refuse the move and stay. Prints the names of
# those moved. Without it, such a thread wakes on whichever core is idle: on this VM,
# kdamond (the guest's DAMON page-out) runs for about 4 ms every half second, and a
# server core that is idle more of the time takes more of those stalls.
keep_kthreads_off() {
    local core=$1 all others tid mask names=()
    all=$(printf '%x' $(( (1 << $(getconf _NPROCESSORS_ONLN)) - 1 )))
    others=$(printf '%x' $(( 0x$all & ~(1 << core) )))
    for tid in $(ps -o pid= --ppid 2); do
        mask=$(taskset -p "$tid" 2>/dev/null | awk '{print $NF}') || continue
        [ "$mask" = "$all" ] || continue
        taskset -p "$others" "$tid" > /dev/null 2>&1 || continue
        echo "$tid:$mask" >> "$work/moved-kthreads"
        names+=("$(cat "/proc/$tid/comm" 2>/dev/null)")
    done
    echo "${names[*]:-none}"
}

# free_port — a port nothing listens on, 10,000 or more below the kernel's ephemeral
# range: a port in that range may be taken by an outgoing connection between the check
# and the bind, and a Redis Cluster node also binds its port + 10,000 for the bus.
free_port() {
    local port low
    read -r low _ < /proc/sys/net/ipv4/ip_local_port_range
    while :; do
        port=$((10000 + RANDOM % (low - 20000)))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# wait_port PORT [SECONDS] — waits until PORT on loopback accepts a connection (default 20 s).
wait_port() {
    local polls=$(( ${2:-20} * 20 ))
    for _ in $(seq 1 "$polls"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "port $1 never opened" >&2; return 1
}

# make_files KEYS SIZE — $work/www/api/cache/key:N, SIZE bytes each, for the static servers.
make_files() {
    local value; value=$(head -c "$2" /dev/zero | tr '\0' 'v')
    mkdir -p "$work/www/api/cache"
    for i in $(seq 0 $(($1 - 1))); do printf '%s' "$value" > "$work/www/api/cache/key:$i"; done
    chmod -R a+rX "$work/www"
}

# start_nginx [WORKERS] — serves $work/www on a free port; sets $port.
start_nginx() {
    port=$(free_port)
    cat > "$work/nginx.conf" <<NGINX
worker_processes ${1:-$(nproc)};
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
    listen 127.0.0.1:$port reuseport;
    root $work/www;
    default_type application/octet-stream;
  }
}
NGINX
    "$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/nginx.conf" -g 'daemon off;' &
    pids+=($!)
    wait_port "$port"
}

# start_cache_manager [--core N] [VAR=VALUE ...] — the release binary on a free port,
# started under `taskset -c N` if given; sets $port (its PID is the last of $pids).
# CACHE_MANAGER_BIN names another build to start.
start_cache_manager() {
    local pin=()
    if [ "${1:-}" = --core ]; then pin=(taskset -c "$2"); shift 2; fi
    port=$(free_port)
    "${pin[@]}" env CACHE_LISTEN="127.0.0.1:$port" CACHE_L1_MAX_ENTRIES=20000 RUST_LOG=warn "$@" \
        "${CACHE_MANAGER_BIN:-target/release/cache-manager}" > "$work/cache-manager-$port.log" 2>&1 &
    pids+=($!)
    wait_port "$port" || { head -5 "$work/cache-manager-$port.log" >&2; return 1; }
}

# start_redis [--core N] — redis-server on a free port without persistence, started under
# `taskset -c N` if given; sets $port (its PID is the last of $pids).
start_redis() {
    local pin=()
    if [ "${1:-}" = --core ]; then pin=(taskset -c "$2"); shift 2; fi
    port=$(free_port)
    "${pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        > "$work/redis-$port.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
}

# pin_nginx CORE — moves the nginx that start_nginx started, master and workers, to CORE.
pin_nginx() {
    local master; master=$(cat "$work/nginx.pid")
    for p in "$master" $(pgrep -P "$master"); do taskset -pc "$1" "$p" > /dev/null; done
}

# prefill PORT KEYS SIZE — PUTs key:0 … key:KEYS-1 with SIZE-byte values.
prefill() {
    target/release/cache-bench load --target "http://127.0.0.1:$1" --keys "$2" --value-size "$3" \
        --prefill --duration 1ms --warmup 0s --quiet > /dev/null
}

cpu_ticks() { # PID... -> user + system clock ticks of all the processes' threads
    local p
    for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'
}

watched_us() { # URL -> the microseconds cache-manager's cores have spent watching for work
    python3 -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1] + "/api/cache/metrics"))["idle_watch_us"])' "$1"
}

core_ticks() { # CORE -> "busy total" clock ticks of that core since boot
    awk -v cpu="cpu$1" '$1 == cpu {busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6}' /proc/stat
}

busy_share() { # BEFORE AFTER (each "busy total") -> percent busy in between
    awk -v b="$1" -v a="$2" 'BEGIN {split(b, x, " "); split(a, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2])}'
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# The scripts below keep their measurements in the associative array `results`: one
# space-separated list of requests/s per server key.

# show_round ROUND KEY... — the latest measurement of each key.
show_round() {
    local line="round $1:" key
    shift
    for key in "$@"; do line+=" $key=$(echo "${results[$key]}" | awk '{print $NF}')"; done
    echo "$line"
}

# median_table HEADER BASE DIRECTION KEY:LABEL... — the median of each key, and its ratio
# to the median of BASE: DIRECTION "over" prints row/BASE, "under" prints BASE/row.
median_table() {
    local header=$1 base direction=$3 row key value
    base=$(echo "${results[$2]}" | median)
    shift 3
    printf '\n%-46s %12s %22s\n' "server (median of $rounds)" "requests/s" "$header"
    for row in "$@"; do
        key=${row%%:*}
        value=$(echo "${results[$key]}" | median)
        if [ "$direction" = over ]; then
            printf '%-46s %12.0f %22s\n' "${row#*:}" "$value" "$(ratio "$value" "$base")"
        else
            printf '%-46s %12.0f %22s\n' "${row#*:}" "$value" "$(ratio "$base" "$value")"
        fi
    done
}

# load_pacing — sets the array $pacing to cache-bench's open-loop pacing: `--busy-poll`,
# or the load thread's 1 ms timer (nothing) with BUSY_POLL=0.
load_pacing() {
    pacing=(--busy-poll)
    [ "${BUSY_POLL:-1}" = 1 ] || pacing=()
}
