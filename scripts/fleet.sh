#!/usr/bin/env bash
# scripts/fleet.sh [SIZES] [WRITE_RATE] [PROBES] — coherence across a fleet (issue 13):
# a 3-master Redis Cluster on loopback and, for each coherence mode (FLEET_MODES, default
# "pubsub tracking") and each fleet size in SIZES (default 2,4,8,16), that many
# instances with CACHE_CORES=1 on it. `cache-bench fleet` then
# writes WRITE_RATE (default 1000) background PUTs a second spread over the instances,
# and PROBES (default 200) times overwrites a key every instance holds in L1 through one
# instance, polling every other over HTTP until it serves the new value. Reports
# propagation p50/p99/p99.9, stale reads (> 1 s), events applied per second per instance,
# publishes per second per Redis node, and L1 flushes; as text, JSON
# (target/fleet/fleet-MODE-N.json) and a plot of propagation against N for both modes
# (target/fleet/propagation.svg). Extra instance settings come from the environment as
# FLEET_ENV="VAR=VALUE ..." (e.g. FLEET_ENV="CACHE_EVENTS_SHARDED=true").
#
# Then the costs the scaling model in BENCHMARKS.md is built from:
#   - what receiving costs an instance, in each mode: 4 instances, 5,000 writes a second
#     into the first only, the other three's utime + stime (/proc) per second and per
#     event they applied;
#   - Redis's CPU per PUBLISH and per delivery: a standalone redis-server taking
#     pipelined PUBLISHes of a 200-byte event (redis-benchmark) with 1 and with 16
#     subscribers, its utime + stime over the messages; the difference gives the cost of
#     each delivery. Written to target/fleet/costs.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

sizes="${1:-2,4,8,16}"
rate="${2:-1000}"
probes="${3:-200}"
out=target/fleet
mkdir -p "$out"
install_missing redis-server:redis-server redis-cli:redis-tools
cargo build --release -q -p net -p bench-harness

# The cluster: three masters, no replicas.
nodes=()
redis_pids=()
for i in 1 2 3; do
    p=$(free_port)
    mkdir -p "$work/redis-$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$work/redis-$p/nodes.conf" --dir "$work/redis-$p" \
        --save "" --appendonly no > "$work/redis-$p.log" 2>&1 &
    pids+=($!)
    redis_pids+=($!)
    nodes+=("127.0.0.1:$p")
done
for n in "${nodes[@]}"; do wait_port "${n#*:}"; done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes > "$work/create.log"
for _ in $(seq 1 200); do
    redis-cli -p "${nodes[0]#*:}" CLUSTER INFO | grep -q cluster_state:ok && break
    sleep 0.05
done
seeds=$(IFS=,; echo "${nodes[*]}")

# start_fleet N [VAR=VALUE ...] — N instances on the cluster, each following every event
# stream; sets $instances (host:port) and $started (their pids).
start_fleet() {
    local n=$1
    shift
    instances=()
    started=()
    for _ in $(seq 1 "$n"); do
        # shellcheck disable=SC2086  # FLEET_ENV is a list of VAR=VALUE words
        start_cache_manager CACHE_CORES=1 REDIS_CLUSTER_NODES="$seeds" REDIS_TIMEOUT_MS=500 "$@" ${FLEET_ENV:-}
        instances+=("127.0.0.1:$port")
        started+=("${pids[-1]}")
    done
    for i in "${instances[@]}"; do
        until curl -sf "http://$i/api/cache/metrics" | grep -q '"coherence_subscribed":true'; do sleep 0.05; done
    done
}

tick=$(getconf CLK_TCK)

reports=()
modes="${FLEET_MODES:-pubsub tracking}"
for mode in $modes; do
    for n in ${sizes//,/ }; do
        start_fleet "$n" CACHE_COHERENCE="$mode"
        echo "== $mode: $n instances, $rate background writes/s"
        target/release/cache-bench fleet --instances "$(IFS=,; echo "${instances[*]}")" \
            --redis-nodes "$seeds" --write-rate "$rate" --probes "$probes" --label "$mode" \
            --json "$out/fleet-$mode-$n.json"
        reports+=("$out/fleet-$mode-$n.json")
        kill "${started[@]}"
        wait "${started[@]}" 2>/dev/null || true
        redis-cli --cluster call "${nodes[0]}" FLUSHALL > /dev/null
    done
done
target/release/cache-bench fleet-plot "${reports[@]}" --out "$out/propagation.svg"

costs="{}"
for mode in $modes; do
    echo "== $mode: what receiving costs: 4 instances, 5000 writes/s into the first"
    start_fleet 4 CACHE_COHERENCE="$mode"
    receivers=("${started[@]:1}")
    before=$(cpu_ticks "${receivers[@]}")
    target/release/cache-bench fleet --instances "$(IFS=,; echo "${instances[*]}")" --writers 1 \
        --write-rate 5000 --probes 20 --probe-gap 250ms --json "$out/costs-$mode.json" > /dev/null
    after=$(cpu_ticks "${receivers[@]}")
    kill "${started[@]}"
    wait "${started[@]}" 2>/dev/null || true
    redis-cli --cluster call "${nodes[0]}" FLUSHALL > /dev/null
    seconds=$(jq .seconds "$out/costs-$mode.json")
    applied=$(jq '([.per_instance[1:][] | .events_applied_per_s] | add) / 3' "$out/costs-$mode.json")
    writes=$(jq .background_writes_per_s "$out/costs-$mode.json")
    share=$(awk -v c=$((after - before)) -v t="$tick" -v s="$seconds" 'BEGIN {printf "%.2f", c / t / s / 3 * 100}')
    per_event=$(awk -v c=$((after - before)) -v t="$tick" -v s="$seconds" -v e="$applied" \
        'BEGIN {printf "%.1f", (e > 0) ? c / t / s / 3 * 1e6 / e : 0}')
    echo "each receiver: $share % of a core for $writes writes/s elsewhere, $applied events applied/s ($per_event µs each)"
    costs=$(jq -n --argjson c "$costs" --arg mode "$mode" --argjson share "$share" \
        --argjson writes "$writes" --argjson applied "$applied" --argjson per_event "$per_event" \
        '$c + {($mode): {receiver_core_percent: $share, writes_per_s: $writes,
                          events_applied_per_s: $applied, us_per_event: $per_event}}')
done

# Redis's own pub/sub cost, on a standalone server.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no > "$work/redis-pubsub.log" 2>&1 &
rpid=$!
pids+=("$rpid")
wait_port "$rport"
payload=$(head -c 200 /dev/zero | tr '\0' 'e')
messages=200000
publish_cost() {  # publish_cost SUBSCRIBERS — Redis µs of CPU per PUBLISH with that many subscribers
    local subs=() b a
    for _ in $(seq 1 "$1"); do
        redis-cli -p "$rport" SUBSCRIBE cache:events > /dev/null &
        subs+=($!)
    done
    until [ "$(redis-cli -p "$rport" PUBSUB NUMSUB cache:events | tail -1)" = "$1" ]; do sleep 0.05; done
    b=$(cpu_ticks "$rpid")
    redis-benchmark -p "$rport" -n "$messages" -c 4 -P 32 -q PUBLISH cache:events "$payload" > /dev/null
    a=$(cpu_ticks "$rpid")
    kill "${subs[@]}"
    wait "${subs[@]}" 2>/dev/null || true
    awk -v c=$((a - b)) -v t="$tick" -v m="$messages" 'BEGIN {printf "%.3f", c / t * 1e6 / m}'
}
one=$(publish_cost 1)
sixteen=$(publish_cost 16)
delivery=$(awk -v a="$one" -v b="$sixteen" 'BEGIN {printf "%.3f", (b - a) / 15}')
echo "redis CPU per PUBLISH: $one µs with 1 subscriber, $sixteen µs with 16: $delivery µs per delivery"
jq -n --argjson receivers "$costs" --argjson one "$one" --argjson sixteen "$sixteen" \
    --argjson delivery "$delivery" \
    '{receivers: $receivers, redis_us_per_publish_1_subscriber: $one,
      redis_us_per_publish_16_subscribers: $sixteen, redis_us_per_delivery: $delivery}' > "$out/costs.json"
echo "reports in $out/: ${reports[*]##*/}, propagation.svg, costs.json"
