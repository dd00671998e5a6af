#!/usr/bin/env bash
# Latency at a fixed rate on one node with the per-stage breakdown (BENCHMARKS section 10): starts walletd
# (64 partitions on 2 shards, fresh data directory, loopback) and runs walletbench open loop at RATE
# transfers/s for 10 s after a 2 s warmup (batches of 8000, 2 connections x 4 in flight, 30,000 accounts)
# with --metrics-url, RUNS times; prints each run's client latency and the node's stages, then deletes
# the directory. Usage: scripts/bench-latency.sh RATE [RUNS] [BIN_DIR]; RATE 0 runs closed loop.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:?rate}"
runs="${2:-1}"
bin="${3:-${CARGO_TARGET_DIR:-$HOME/.cache/wallet-target}/release}"
port=27481
http=27482
rate_args=()
[ "$rate" != "0" ] && rate_args=(--rate "$rate")
for run in $(seq "$runs"); do
  work="$(mktemp -d /tmp/wallet-bench-latency.XXXXXX)"
  "$bin/walletd" --data-dir "$work/data" --partitions 64 --shards 2 --listen "127.0.0.1:$port" \
    --http-listen "127.0.0.1:$http" --no-pin 2> "$work/walletd.log" &
  node=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/walletd.log" && break; sleep 0.1; done
  echo "=== run $run rate $rate bin $bin $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  "$bin/walletbench" --addr "127.0.0.1:$port" "${rate_args[@]}" --duration 10s --batch-size 8000 \
    --connections 2 --inflight 4 --accounts 30000 --metrics-url "http://127.0.0.1:$http/metrics" \
    --out "$work/bench" > /dev/null || true
  grep -E "^throughput|^  p50|^  p99 |^  p99.9 |^  max|^server|^  (stage|queue_wait|execute|log_sync|total|checkpoint)" "$work/bench/report.txt"
  kill "$node"; wait "$node" 2>/dev/null || true
  rm -rf "$work"; sync
done
