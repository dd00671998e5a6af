#!/usr/bin/env bash
# The HTTP edge against the binary protocol, in one session on one fresh single node (loopback only):
# wrk over keep-alive connections on POST /v1/wallet/transfer (one transfer per request) and on
# POST /v1/wallet/transfers (WALLET_BATCH per request), then walletbench with the same shapes over the
# binary protocol. Prints one line per run; BENCHMARKS.md section 7 has the figures and the reading.
# Usage: scripts/bench-http.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
runs="${1:-3}"
seconds="${2:-10}"
accounts=1000
batch=100
wallet_build
bin="$CARGO_TARGET_DIR/release"
dir="$(mktemp -d /tmp/wallet-bench-http.XXXXXX)"
"$bin/walletd" --data-dir "$dir/data" --listen 127.0.0.1:7450 --http-listen 127.0.0.1:8450 --no-pin \
    >"$dir/walletd.log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do
    if curl -sf http://127.0.0.1:8450/v1/status >/dev/null; then break; fi
    sleep 0.1
done
account() {
    curl -sf -o /dev/null -X POST http://127.0.0.1:8450/v1/accounts -H 'Content-Type: application/json' \
        -d "{\"id\": $1, \"currency\": \"USD\", \"external\": $2}"
}
account 1 true
for id in $(seq 2 "$accounts"); do account "$id" false; done

for run in $(seq 1 "$runs"); do
    echo "http single, run $run: $(WALLET_ACCOUNTS=$accounts wrk -t2 -c64 -d"${seconds}s" \
        -s bench/http/transfer.lua http://127.0.0.1:8450 | grep '^WALLET')"
    echo "http batch of $batch, run $run: $(WALLET_ACCOUNTS=$accounts WALLET_BATCH=$batch wrk -t2 -c8 \
        -d"${seconds}s" -s bench/http/transfer.lua http://127.0.0.1:8450 | grep '^WALLET')"
    for shape in "1 64" "$batch 8"; do
        set -- $shape
        out="$dir/walletbench-$1-$run"
        "$bin/walletbench" --addr 127.0.0.1:7450 --duration "${seconds}s" --warmup 1s --batch-size "$1" \
            --connections "$2" --inflight 1 --accounts "$accounts" --out "$out" >/dev/null
        echo "binary batch of $1 x $2 connections, run $run: $(python3 -c '
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
l = s["latency_us"]
print("transfers/s %.0f p50_ms %.2f p90_ms %.2f p99_ms %.2f p99.9_ms %.2f max_ms %.2f errors %d" % (
    s["transfers_per_second"], l["p50"] / 1e3, l["p90"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3,
    l["max"] / 1e3, s["unexpected_errors"]))' "$out")"
    done
done
