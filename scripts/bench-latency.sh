#!/usr/bin/env bash
# Latency at a fixed rate on one node with the per-stage breakdown (BENCHMARKS sections 10-12): starts
# walletd (64 partitions on 2 shards, fresh data directory, loopback) and runs walletbench open loop at
# RATE transfers/s for DURATION (default 10s) after a 2 s warmup (batches of 8000, 2 connections x 4 in
# flight, 30,000 accounts) with --metrics-url, RUNS times. Prints each run's client latency and the node's
# stages, then one line with the node's shard rounds over 50/100/250 ms (the whole run, warmup included),
# the minor page faults the node took while loaded, and its slow-round log lines (each names the phases).
# Deletes the directory afterwards. Usage: [DURATION=20s] scripts/bench-latency.sh RATE [RUNS] [BIN_DIR];
# RATE 0 runs closed loop.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:?rate}"
runs="${2:-1}"
bin="${3:-${CARGO_TARGET_DIR:-$HOME/.cache/wallet-target}/release}"
duration="${DURATION:-10s}"
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
  faults_before=$(awk '{print $10}' "/proc/$node/stat")
  "$bin/walletbench" --addr "127.0.0.1:$port" "${rate_args[@]}" --duration "$duration" --batch-size 8000 \
    --connections 2 --inflight 4 --accounts 30000 --metrics-url "http://127.0.0.1:$http/metrics" \
    --out "$work/bench" > /dev/null || true
  faults_after=$(awk '{print $10}' "/proc/$node/stat")
  curl -s "http://127.0.0.1:$http/metrics" > "$work/metrics.txt" || true
  grep -E "^throughput|^  p50|^  p99 |^  p99.9 |^  max|^server|^  (stage|queue_wait|execute|log_sync|total|checkpoint)" "$work/bench/report.txt"
  rounds=$(awk -F'[" ]' '/^wallet_shard_round_duration_seconds_bucket/ {
      for (i = 1; i <= NF; i++) if ($i ~ /le=$/) le = $(i + 1); n[le] += $NF }
    END { total = n["+Inf"]; printf "rounds %d, over 50 ms %d, over 100 ms %d, over 250 ms %d",
      total, total - n["0.05"], total - n["0.1"], total - n["0.25"] }' "$work/metrics.txt")
  echo "node: $rounds; minor faults while loaded $((faults_after - faults_before)); slow-round lines $(grep -c 'a round took' "$work/walletd.log" || true)"
  kill "$node"; wait "$node" 2>/dev/null || true
  rm -rf "$work"; sync
done
