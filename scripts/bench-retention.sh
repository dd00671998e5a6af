#!/usr/bin/env bash
# Disk use of a default single node at full rate, over time: starts walletd (default configuration,
# plus ENGINE_TOML lines if given) on loopback in a fresh data directory, runs walletbench closed loop for
# SECONDS with --verify and --retry-first RETRY (ids of the first RETRY resent at the end and required
# to be answered as replays), and samples every 5 s the bytes of the event log, the bases, the id-index
# runs and the state store. Prints the samples and walletbench's summary, then deletes the directory.
# Usage: scripts/bench-retention.sh SECONDS [RETRY] [BIN_DIR]
#   ENGINE_TOML='log_retention_bytes = 1125899906842624' scripts/bench-retention.sh 20   (retention off)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?seconds}"
retry="${2:-0s}"
bin="${3:-${CARGO_TARGET_DIR:-$HOME/.cache/wallet-target}/release}"
port=27471
work="$(mktemp -d /tmp/wallet-bench-retention.XXXXXX)"
data="$work/data"
trap 'kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; rm -rf "$work"; sync' EXIT
printf '[engine]\n%s\n' "${ENGINE_TOML:-}" > "$work/walletd.toml"
"$bin/walletd" --config "$work/walletd.toml" --data-dir "$data" --listen "127.0.0.1:$port" \
  --http-listen 127.0.0.1:0 --no-pin 2> "$work/walletd.log" &
node=$!
for _ in $(seq 100); do grep -q "listening on" "$work/walletd.log" && break; sleep 0.1; done
grep -q "listening on" "$work/walletd.log" || { cat "$work/walletd.log"; exit 1; }
bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
(
  start=$(date +%s)
  while kill -0 "$node" 2>/dev/null; do
    now=$(($(date +%s) - start))
    segments=$(ls "$data/shard-000/wal" 2>/dev/null | grep -c '\.wal$' || true)
    echo "sample t=${now}s log=$(bytes "$data/shard-000/wal") segments=$segments base_state=$(bytes "$data"/shard-000/base-*/state) ids=$(bytes "$data/shard-000/ids") state=$(bytes "$data/shard-000/state") total=$(bytes "$data")"
    sleep 5
  done
) &
sampler=$!
retry_args=()
[ "$retry" != "0s" ] && retry_args=(--retry-first "$retry")
"$bin/walletbench" --addr "127.0.0.1:$port" --batch-size 8190 --connections 2 --inflight 4 --accounts 10000 \
  --duration "${seconds}s" --verify "${retry_args[@]}" --out "$work/bench" > "$work/bench.out"
sed -n '1,/^parameters/p' "$work/bench/report.txt" | grep -v '^parameters'
kill "$sampler" 2>/dev/null || true
echo "final log=$(bytes "$data/shard-000/wal") base_state=$(bytes "$data"/shard-000/base-*/state) ids=$(bytes "$data/shard-000/ids") total=$(bytes "$data")"
grep -c "could not" "$work/walletd.log" | sed 's/^/retention warnings: /' || true
