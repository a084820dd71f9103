#!/usr/bin/env bash
# scripts/syscalls.sh [DURATION] [ROUNDS] — the latency floor, measured in one run (issue
# 16): cache-manager (CACHE_CORES=1), nginx (one worker, static files of the same bytes)
# and Redis, each pinned to core 0 with the load pinned to core 1 (taskset), GETs of
# 10,000 keys with 100-byte values. For each server:
#
#   - syscalls per request at 1 and 64 connections: the kernel's count of syscall
#     entries by every thread of the server over a whole load run (`perf stat -e
#     raw_syscalls:sys_enter`), over the requests that run completed. strace, which the
#     first version used, stops the thread at each syscall: the round trip grew fourfold,
#     which changes what an executor that watches before sleeping does;
#   - server CPU per request at 64 connections: utime + stime of all the server's
#     threads (/proc/PID/stat) over the requests, with nothing attached, in short rounds of
#     their own (see below), with one client for all three (`cache-bench load`: HTTP, or
#     RESP GETs of the same keys for Redis) and again with each server's own load tool;
#   - the single-connection round trip (p50, p99), timed by one client for all three
#     (`cache-bench ping`: HTTP for cache-manager and nginx, RESP for Redis), so that the
#     load tools' own costs do not enter the comparison. It is measured apart from the
#     rounds, in PING_ROUNDS short rounds (default 15, 10,000 requests each) that visit
#     the servers in a new random order each time: this VM's speed drifts over minutes,
#     and a round of the other measurements takes minutes per server. Also reported:
#     cache-manager's p50 less Redis's, the median over rounds, and in how many rounds it
#     was lower;
#   - the 64-connection throughput, with how busy each core was meanwhile (a load core
#     near 100 % means the figure is the load tool's limit, not the server's), and the
#     one client's ceiling: the most requests/s its core could carry, as a multiple of
#     Redis's, from how busy it was carrying Redis's load;
#   - open-loop p99.9 (and p99) at 10k, 20k and 40k requests/s for cache-manager and
#     nginx (`cache-bench load --rate`, 64 connections), medians of OPEN_ROUNDS rounds
#     (default 9) of DURATION, each rate's two servers in a new random order each round,
#     and the same percentiles of all the rounds' requests together (`cache-bench merge`).
#     The load busy-polls (`--busy-poll`), so that requests leave when meant rather than
#     in a burst per millisecond of its timer; BUSY_POLL=0 paces on that timer, as
#     runs before 2026-12-05 (run 14) did;
#
# Syscall counts use wrk (-t1) for HTTP and redis-benchmark for Redis, and so do the
# "own tool" CPU and throughput figures. Both tools saturate the load core before
# cache-manager saturates its own (wrk) or Redis does (redis-benchmark), so those
# figures are partly the tools' limits; cache-bench load costs less per request, and being
# one client for all three it compares servers rather than tools (as ping does for the
# round trip).
# Syscalls: medians of ROUNDS rounds (default 3, DURATION default 5s), the servers
# interleaved in each round. CPU and throughput: medians of CPU_ROUNDS short
# rounds (default 9, CPU_SECONDS default 3) that visit the servers in a new random order
# each time, with cache-manager's figure over each peer's per round. Then
# `perf record` of cache-manager under the 64-connection load (its top symbols), and the
# stacks of its `membarrier` calls at one connection (`strace -k`), written to
# target/syscalls/. Installs nginx, redis, wrk, strace and perf if missing.
#
# While it measures, kernel threads allowed on any core are kept off the server core
# (lib.sh's keep_kthreads_off, as `tuna isolate` does; ISOLATE=0 leaves them be): the
# same for every server, and what a dedicated host's serving cores get from isolcpus.
# Otherwise the open loop's p99.9 is mostly a count of the stalls such a thread caused
# on the server core in that run (BENCHMARKS.md, "The open loop's tail").
#
# cache-manager runs with its defaults, so its cores watch for up to CACHE_IDLE_SPIN_US
# before they sleep (README, "Latency"); its busy time then includes watching, which is
# reported beside the CPU figures (the metric idle_watch_us, read before and after each
# run) with the ratios the CPU less the watching would give.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

duration="${1:-5s}"
rounds="${2:-3}"
keys=10000
seconds=${duration%s}
out=target/syscalls
mkdir -p "$out"
install_missing nginx:nginx redis-server:redis-server redis-benchmark:redis-tools wrk:wrk strace:strace perf:linux-perf
cargo build --release -q -p net -p bench-harness
make_files "$keys" 100

# The requests are built once, in wrk's init, and then handed out in a scattered fixed
# order (a stride coprime with the key count visits every key). Built per request
# (math.random and wrk.format each time), wrk's own core was saturated at about 100k
# requests/s, so the throughput figures measured wrk rather than the server.
cat > "$work/get.lua" <<LUA
wrk.headers["Accept"] = "application/octet-stream"
local requests, n = {}, 0
init = function(args)
  for i = 0, $keys - 1 do requests[i + 1] = wrk.format("GET", "/api/cache/key:" .. i) end
end
request = function()
  n = n + 1
  return requests[(n * 7919) % $keys + 1]
end
LUA

# The servers, each on core 0.
start_cache_manager --core 0 CACHE_CORES=1
declare -A pid url
pid[cache-manager]=${pids[-1]}
prefill "$port" "$keys" 100
url[cache-manager]="http://127.0.0.1:$port"

start_nginx 1
url[nginx]="http://127.0.0.1:$port"
pid[nginx]=$(pgrep -P "$(cat "$work/nginx.pid")" | head -n1)
pin_nginx 0

start_redis --core 0
redis_port=$port
pid[redis]=${pids[-1]}
redis-benchmark -p "$redis_port" -t set -n $((keys * 5)) -r "$keys" -d 100 -q > /dev/null
# The same keys as the HTTP servers', for cache-bench (redis-benchmark's are zero-padded).
target/release/cache-bench load --target "redis://127.0.0.1:$redis_port" --keys "$keys" \
    --value-size 100 --prefill --duration 1ms --warmup 0s --quiet > /dev/null

# load SERVER CONNECTIONS [SECONDS] -> "requests p50_us" of one run (DURATION by default),
# the load on core 1.
load() {
    local server=$1 connections=$2 secs=${3:-$seconds}
    if [ "$server" = redis ]; then
        # About SECONDS' worth of requests, or less.
        local n=$((connections == 1 ? 20000 * secs : 60000 * secs))
        taskset -c 1 redis-benchmark -p "$redis_port" -t get -n "$n" -r "$keys" -d 100 -c "$connections" -q 2>/dev/null \
            | tr '\r' '\n' | awk -v n="$n" '/^GET:/ {for (i = 1; i <= NF; i++) if ($i ~ /^p50=/) {sub(/p50=/, "", $i); p50 = $i * 1000}} END {print n, p50}'
    else
        taskset -c 1 wrk -t1 -c"$connections" -d"${secs}s" --latency -s "$work/get.lua" "${url[$server]}" \
            | awk '/requests in/ {n = $1} /^ +50%/ {v = $2; if (v ~ /us$/) {sub(/us/, "", v); p = v} else if (v ~ /ms$/) {sub(/ms/, "", v); p = v * 1000} else {sub(/s$/, "", v); p = v * 1e6}} END {print n, p}'
    fi
}

# one_client SERVER SECONDS -> the requests of a closed-loop run of cache-bench load over
# 64 connections, the load on core 1; says on stderr if any request missed or failed.
one_client() {
    local server=$1 secs=$2 target json="$work/one-client.json"
    if [ "$server" = redis ]; then target="redis://127.0.0.1:$redis_port"; else target=${url[$server]}; fi
    taskset -c 1 target/release/cache-bench load --target "$target" --connections 64 --threads 1 \
        --duration "${secs}s" --warmup 0s --keys "$keys" --quiet --json "$json" > /dev/null
    python3 - "$json" "$server" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["errors"] or r["hit_ratio"] < 1:
    print(f"{sys.argv[2]}: {r['errors']} errors, hit ratio {r['hit_ratio']}", file=sys.stderr)
print(r["requests"])
PY
}

# round_trip SERVER -> "p50_us p99_us" of one connection, timed by cache-bench ping on core 1.
round_trip() {
    local server=$1 addr
    if [ "$server" = redis ]; then addr=(--protocol resp --addr "127.0.0.1:$redis_port")
    else addr=(--addr "${url[$server]#http://}"); fi
    taskset -c 1 target/release/cache-bench ping "${addr[@]}" --keys "$keys" \
        --requests 10000 --warmup 2000 \
        | sed -E 's/.*p50 ([0-9.]+) µs.* p99 ([0-9.]+) µs.*/\1 \2/'
}

# tail_of HISTOGRAM... -> "p99 p99.9" in µs of the requests of those `load --histogram`
# files together.
tail_of() {
    target/release/cache-bench merge "$@" \
        | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["p99_us"], r["p999_us"])'
}

# open_loop SERVER RATE ROUND -> "p99 p99.9" in µs at RATE requests/s over 64
# connections; every request's latency is kept in $work/open-SERVER-RATE-ROUND.json.
open_loop() {
    local server=$1 rate=$2 histogram="$work/open-$1-$2-$3.json" pacing
    load_pacing
    taskset -c 1 target/release/cache-bench load --target "${url[$server]}" --connections 64 \
        --rate "$rate" --duration "$duration" --warmup 1s --keys "$keys" --quiet \
        "${pacing[@]}" --histogram "$histogram" > /dev/null
    tail_of "$histogram"
}

# The syscalls counted: all of them, and a few by name for the breakdown.
counted=raw_syscalls:sys_enter
for call in io_uring_enter sendto recvfrom membarrier epoll_wait read write; do
    counted+=",syscalls:sys_enter_$call"
done

syscalls_per_request() { # SERVER CONNECTIONS
    local server=$1 connections=$2 trace="$work/syscalls-$1-$2.txt" result
    perf stat -x, -e "$counted" -p "${pid[$server]}" -o "$trace" 2>/dev/null &
    local counter=$!
    sleep 0.5
    result=$(load "$server" "$connections")
    kill -INT "$counter"; wait "$counter" 2>/dev/null || true
    awk -F, -v n="${result%% *}" '$3 == "raw_syscalls:sys_enter" {printf "%.2f", $1 / n}' "$trace"
    # Per request, for the breakdown printed at the end.
    awk -F, -v n="${result%% *}" '$3 ~ /^syscalls:sys_enter_/ && $1 > 0 {sub(/syscalls:sys_enter_/, "", $3); printf "%s %.2f\n", $3, $1 / n}' \
        "$trace" > "$trace.per-request"
}

if [ "${ISOLATE:-1}" = 1 ]; then
    echo -n "kernel threads kept off core 0 while measuring: "
    keep_kthreads_off 0
fi

declare -A results
rates=(10000 20000 40000)
hz=$(getconf CLK_TCK)
servers=(cache-manager nginx redis)
for round in $(seq 1 "$rounds"); do
    for server in "${servers[@]}"; do
        results[$server-sys1]+="$(syscalls_per_request "$server" 1) "
        results[$server-sys64]+="$(syscalls_per_request "$server" 64) "
    done
    echo "round $round done"
done

# The open loop, in rounds of its own (OPEN_ROUNDS, default 9, of DURATION each), each
# rate's two servers in a new random order every round. A run's p99.9 at 10,000/s is its
# 50th-slowest request in 5 s, and one stall of either core of a few milliseconds (the
# VM's, not the server's) puts more requests than that behind it: a handful of runs says
# more about where the stalls fell than about the servers (BENCHMARKS.md, "The open
# loop's tail"), so its medians are taken over more rounds than the syscall counts'.
open_rounds="${OPEN_ROUNDS:-9}"
for round in $(seq 1 "$open_rounds"); do
    for rate in "${rates[@]}"; do
        for server in $(shuf -e cache-manager nginx); do
            read -r p99 p999 <<< "$(open_loop "$server" "$rate" "$round")"
            results[$server-open$rate]+="$p999 "
            results[$server-open99-$rate]+="$p99 "
        done
    done
done
echo "open-loop rounds done"

# CPU per request and throughput at 64 connections, in short rounds apart from the rest,
# the servers in a new random order each round, for the same reason as the round trips
# below: this VM's speed drifts over minutes, and a server measured in a slow phase
# against one in a fast phase is not a comparison. Each round measures every server with
# both loads, `one` (cache-bench for all three) and `own` (wrk or redis-benchmark), and
# gives cache-manager's figure over each peer's for each; the medians of those ratios are
# reported.
cpu_rounds="${CPU_ROUNDS:-9}"
cpu_seconds="${CPU_SECONDS:-3}"
tools=(one own)
declare -A ratios
ceiling=""
for round in $(seq 1 "$cpu_rounds"); do
    declare -A cpu_now=() rps_now=() watched_now=()
    for run in $(shuf -e {one,own}:{cache-manager,nginx,redis}); do
        tool=${run%%:*} server=${run#*:}
        [ "$server" != cache-manager ] || watched=$(watched_us "${url[$server]}")
        before=$(cpu_ticks "${pid[$server]}")
        server_core=$(core_ticks 0) load_core=$(core_ticks 1)
        started=$(date +%s.%N)
        if [ "$tool" = one ]; then
            requests=$(one_client "$server" "$cpu_seconds")
        else
            many=$(load "$server" 64 "$cpu_seconds")
            requests=${many%% *}
        fi
        elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {print e - s}')
        after=$(cpu_ticks "${pid[$server]}")
        if [ "$server" = cache-manager ]; then
            watched_now[$tool]=$(awk -v a="$watched" -v b="$(watched_us "${url[$server]}")" -v n="$requests" 'BEGIN {printf "%.2f", (b - a) / n}')
            results[$tool-watched]+="${watched_now[$tool]} "
        fi
        results[$tool-$server-busy0]+="$(busy_share "$server_core" "$(core_ticks 0)") "
        load_busy=$(busy_share "$load_core" "$(core_ticks 1)")
        results[$tool-$server-busy1]+="$load_busy "
        # The one client's core, busy for a share b of the time carrying Redis's load,
        # could carry at most 1/b of Redis's requests/s: no server can be measured
        # faster than that through it (BENCHMARKS.md, "The load generator's own cost").
        if [ "$run" = one:redis ]; then
            ceiling+="$(awk -v b="$load_busy" 'BEGIN {printf "%.3f", 100 / b}') "
        fi
        cpu_now[$run]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
        rps_now[$run]=$(awk -v n="$requests" -v s="$elapsed" 'BEGIN {printf "%.0f", n / s}')
        results[$tool-$server-cpu]+="${cpu_now[$run]} "
        results[$tool-$server-rps]+="${rps_now[$run]} "
    done
    for tool in "${tools[@]}"; do
        for peer in nginx redis; do
            ratios[$tool-cpu-$peer]+="$(awk -v a="${cpu_now[$tool:cache-manager]}" -v b="${cpu_now[$tool:$peer]}" 'BEGIN {printf "%.3f", a / b}') "
            ratios[$tool-rps-$peer]+="$(awk -v a="${rps_now[$tool:cache-manager]}" -v b="${rps_now[$tool:$peer]}" 'BEGIN {printf "%.3f", a / b}') "
            ratios[$tool-work-$peer]+="$(awk -v a="${cpu_now[$tool:cache-manager]}" -v w="${watched_now[$tool]}" -v b="${cpu_now[$tool:$peer]}" 'BEGIN {printf "%.3f", (a - w) / b}') "
        done
    done
done
echo "CPU rounds done"

ping_rounds="${PING_ROUNDS:-15}"
lead=""
for round in $(seq 1 "$ping_rounds"); do
    declare -A p50_now=()
    for server in $(shuf -e "${servers[@]}"); do
        one=$(round_trip "$server")
        p50_now[$server]=${one% *}
        results[$server-p50]+="${one% *} "
        results[$server-p99]+="${one#* } "
    done
    lead+="$(awk -v a="${p50_now[cache-manager]}" -v b="${p50_now[redis]}" 'BEGIN {printf "%.2f", a - b}') "
done
echo "one-connection rounds done"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "each server on core 0, the load on core 1; syscalls: medians of $rounds rounds of $duration;"
echo "CPU, requests/s and busy: medians of $cpu_rounds rounds of ${cpu_seconds}s"
printf '%-14s %14s %15s %17s %11s %11s %12s %18s\n' server "syscalls/req@1" "syscalls/req@64" "CPU/req@64 (µs)" "p50@1 (µs)" "p99@1 (µs)" "req/s@64" "busy server/load"
for server in "${servers[@]}"; do
    printf '%-14s %14s %15s %17s %11s %11s %12s %18s\n' "$server" \
        "$(echo "${results[$server-sys1]}" | median)" "$(echo "${results[$server-sys64]}" | median)" \
        "$(echo "${results[one-$server-cpu]}" | median)" "$(echo "${results[$server-p50]}" | median)" \
        "$(echo "${results[$server-p99]}" | median)" "$(echo "${results[one-$server-rps]}" | median)" \
        "$(echo "${results[one-$server-busy0]}" | median) % / $(echo "${results[one-$server-busy1]}" | median) %"
done
echo "(CPU, req/s and busy: one client for all three, cache-bench load; syscalls: wrk, redis-benchmark)"
echo "(p50 and p99 at one connection: medians of $ping_rounds short rounds, the servers in a new"
echo " random order each round; cache-manager's p50 less Redis's, by the median per round:"
echo " $(echo "$lead" | median) µs, lower in $(echo "$lead" | tr ' ' '\n' | grep -c '^-') of $ping_rounds rounds)"
# below_in RATIOS -> in how many of them cache-manager's figure was under the peer's
below_in() { tr ' ' '\n' | grep -v '^$' | awk '$1 < 1 {n++} END {print n + 0}'; }
# ratios_of TOOL -> the per-round ratios' medians, against the bars
ratios_of() {
    echo "(per round, cache-manager's figure over the peer's, the median over rounds:"
    echo " CPU/req over Redis's $(echo "${ratios[$1-cpu-redis]}" | median) (under it in $(echo "${ratios[$1-cpu-redis]}" | below_in) of $cpu_rounds rounds), over nginx's $(echo "${ratios[$1-cpu-nginx]}" | median) (bar: 0.667);"
    echo " req/s over Redis's $(echo "${ratios[$1-rps-redis]}" | median) (bar: 1.2), over nginx's $(echo "${ratios[$1-rps-nginx]}" | median) (bar: 1.6))"
    echo "(of cache-manager's CPU/req, $(echo "${results[$1-watched]}" | median) µs was watching for work (idle_watch_us); without it,"
    echo " over Redis's $(echo "${ratios[$1-work-redis]}" | median), over nginx's $(echo "${ratios[$1-work-nginx]}" | median))"
}
ratios_of one
echo "(the one client's ceiling: carrying Redis's load kept its core busy enough that it could"
echo " have carried at most $(echo "$ceiling" | median)× Redis's requests/s, by the median per round)"
echo
echo "the same rounds through each server's own load tool (wrk -t1 for HTTP, redis-benchmark for Redis):"
printf '%-14s %17s %12s %18s\n' server "CPU/req@64 (µs)" "req/s@64" "busy server/load"
for server in "${servers[@]}"; do
    printf '%-14s %17s %12s %18s\n' "$server" "$(echo "${results[own-$server-cpu]}" | median)" \
        "$(echo "${results[own-$server-rps]}" | median)" \
        "$(echo "${results[own-$server-busy0]}" | median) % / $(echo "${results[own-$server-busy1]}" | median) %"
done
ratios_of own
echo "(busy: each core's share of the 64-connection run spent running anything; a load core"
echo " near 100 % means the load tool, not the server, set the throughput)"
echo
echo "open loop, 64 connections: p99.9 (p99) in µs at each offered rate, medians of $open_rounds rounds of $duration"
printf '%-14s' server; printf ' %16s' "${rates[@]}"; echo
for server in cache-manager nginx; do
    printf '%-14s' "$server"
    for rate in "${rates[@]}"; do
        printf ' %16s' "$(echo "${results[$server-open$rate]}" | median) ($(echo "${results[$server-open99-$rate]}" | median))"
    done
    echo
done
echo "the same, of all $open_rounds rounds' requests together (cache-bench merge)"
for server in cache-manager nginx; do
    printf '%-14s' "$server"
    for rate in "${rates[@]}"; do
        read -r p99 p999 <<< "$(tail_of "$work/open-$server-$rate-"*.json)"
        printf ' %16s' "$p999 ($p99)"
    done
    echo
done
# Per round too: a run's p99.9 on this kind of VM is often one stall's doing, so how
# often cache-manager was at or under nginx says more than the medians.
for rate in "${rates[@]}"; do
    echo "  at $rate/s, per round: cache-manager ${results[cache-manager-open$rate]}; nginx ${results[nginx-open$rate]}; cache-manager at or under nginx in" \
        "$(paste -d' ' <(echo "${results[cache-manager-open$rate]}" | tr ' ' '\n' | grep -v '^$') \
            <(echo "${results[nginx-open$rate]}" | tr ' ' '\n' | grep -v '^$') | awk '$1 <= $2 {n++} END {print n + 0}')" \
        "of $open_rounds"
done

echo
for connections in 1 64; do
    echo "syscalls per request at $connections connection(s), by name (last round):"
    for server in "${servers[@]}"; do
        echo "  $server: $(sort -k2 -nr "$work/syscalls-$server-$connections.txt.per-request" | awk '{printf "%s %s  ", $1, $2}')"
    done
done
cp "$work"/syscalls-*.txt "$out/"

# Where cache-manager's time goes under load, and whose membarrier calls those are.
perf record -q -g -p "${pid[cache-manager]}" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null &
profiler=$!
load cache-manager 64 > /dev/null
wait "$profiler" || true
perf report -i "$out/perf.data" --no-children --sort dso,sym -g none 2>/dev/null | grep '%' | head -25 \
    > "$out/perf-top.txt" || true
echo
echo "cache-manager under 64 connections, top symbols (perf, $out/perf-top.txt):"
head -15 "$out/perf-top.txt"
strace -f -k -e trace=membarrier -p "${pid[cache-manager]}" -o "$out/membarrier-stacks.txt" 2>/dev/null &
tracer=$!
sleep 0.5
load cache-manager 1 > /dev/null
kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
echo
echo "membarrier calls at 1 connection: $(grep -c 'membarrier(' "$out/membarrier-stacks.txt" || true); the first one's stack ($out/membarrier-stacks.txt):"
awk '/membarrier\(/ && !found {found = 1; print "  " $0; next} found && /^ > / {print "  " $0; next} found {exit}' \
    "$out/membarrier-stacks.txt"
echo "callers of every membarrier call, by count (the frame above libc's syscall()):"
awk '/membarrier\(/ {frame = 0; next} /^ > / {frame++; if (frame == 2) {sub(/^.*\(/, ""); sub(/\+0x.*/, ""); print}}' \
    "$out/membarrier-stacks.txt" | sort | uniq -c | sort -nr | sed 's/^/  /'
