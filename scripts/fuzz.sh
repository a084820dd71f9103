#!/usr/bin/env bash
# Runs one cargo-fuzz target for a bounded time:  scripts/fuzz.sh TARGET SECONDS
#
# Targets (fuzz/fuzz_targets/): http_framing, json_bodies, glob_reference,
# event_decoding, envelope_decoding, snapshot_reading; `scripts/fuzz.sh list` prints them.
# The corpus grows in fuzz/corpus/TARGET (not committed) from the seeds in
# fuzz/seeds/TARGET; a crash is saved in fuzz/artifacts/TARGET and ends the run with
# a non-zero status. The last lines of libFuzzer's report go to fuzz/logs/TARGET.txt.
# Not part of CI: scripts/test.sh does not call it.
#
# cargo-fuzz needs a nightly compiler (for -Zsanitizer); with none installed, the
# stable one is used with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is installed from
# crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if [ "${1:-}" = list ]; then
    cargo fuzz list
    exit 0
fi
# Listed once, whole: `cargo fuzz list | grep -q` let grep close the pipe early, and
# cargo-fuzz panics on the broken pipe, which pipefail took for "no such target".
targets=$(cargo fuzz list | tr '\n' ' ')
if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh TARGET SECONDS   (targets: $targets)" >&2
    exit 2
fi
target=$1 seconds=$2
if ! [[ " $targets" == *" $target "* ]]; then
    echo "scripts/fuzz.sh: no target $target; there are: $targets" >&2
    exit 2
fi

if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target" fuzz/logs
log="fuzz/logs/$target.txt"
status=0
"${fuzz[@]}" run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$log.full" || status=$?
tail -n 40 "$log.full" > "$log"
rm -f "$log.full"
echo "scripts/fuzz.sh: $target ran ${seconds}s, exit status $status; summary in $log"
exit "$status"
