#!/usr/bin/env bash
# scripts/fleet.sh [SIZES] [WRITE_RATE] [PROBES] — coherence across a fleet (issue 13):
# a 3-master Redis Cluster on loopback and, for each fleet size in SIZES (default
# 2,4,8,16), that many instances with CACHE_CORES=1 on it. `cache-bench fleet` then
# writes WRITE_RATE (default 1000) background PUTs a second spread over the instances,
# and PROBES (default 200) times overwrites a key every instance holds in L1 through one
# instance, polling every other over HTTP until it serves the new value. Reports
# propagation p50/p99/p99.9, stale reads (> 1 s), events applied per second per instance,
# publishes per second per Redis node, and L1 flushes; as text, JSON
# (target/fleet/fleet-N.json) and a plot of propagation against N
# (target/fleet/propagation.svg). Extra instance settings come from the environment as
# FLEET_ENV="VAR=VALUE ..." (e.g. FLEET_ENV="CACHE_COHERENCE=tracking").
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
for i in 1 2 3; do
    p=$(free_port)
    mkdir -p "$work/redis-$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$work/redis-$p/nodes.conf" --dir "$work/redis-$p" \
        --save "" --appendonly no > "$work/redis-$p.log" 2>&1 &
    pids+=($!)
    nodes+=("127.0.0.1:$p")
done
for n in "${nodes[@]}"; do wait_port "${n#*:}"; done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes > "$work/create.log"
for _ in $(seq 1 200); do
    redis-cli -p "${nodes[0]#*:}" CLUSTER INFO | grep -q cluster_state:ok && break
    sleep 0.05
done
seeds=$(IFS=,; echo "${nodes[*]}")

reports=()
for n in ${sizes//,/ }; do
    instances=()
    started=()
    for _ in $(seq 1 "$n"); do
        # shellcheck disable=SC2086  # FLEET_ENV is a list of VAR=VALUE words
        start_cache_manager CACHE_CORES=1 REDIS_CLUSTER_NODES="$seeds" REDIS_TIMEOUT_MS=500 ${FLEET_ENV:-}
        instances+=("127.0.0.1:$port")
        started+=("${pids[-1]}")
    done
    for i in "${instances[@]}"; do
        until curl -sf "http://$i/readyz" > /dev/null; do sleep 0.05; done
    done
    echo "== $n instances, $rate background writes/s"
    target/release/cache-bench fleet --instances "$(IFS=,; echo "${instances[*]}")" \
        --redis-nodes "$seeds" --write-rate "$rate" --probes "$probes" --json "$out/fleet-$n.json"
    reports+=("$out/fleet-$n.json")
    kill "${started[@]}"
    wait "${started[@]}" 2>/dev/null || true
    redis-cli --cluster call "${nodes[0]}" FLUSHALL > /dev/null
done
target/release/cache-bench fleet-plot "${reports[@]}" --out "$out/propagation.svg"
echo "reports in $out/: ${reports[*]##*/}, propagation.svg"
