#!/usr/bin/env bash
# A 3-node cluster on loopback (3 walletd + walletbench on this machine), closed loop, batches of 8000,
# 30,000 accounts, replication factor 3, leaders spread by the cluster file: one run per line, each on
# fresh data directories, then the size of the three data directories after the run (du, apparent and
# allocated). BENCHMARKS.md section 8 has the figures and the reading. The report and each node's log
# (slow-round lines included) are copied to /tmp/bench-cluster-pPARTITIONS-runN*.
# Usage: scripts/bench-cluster.sh PARTITIONS [RUNS] [SECONDS] [BIN_DIR]
#   BIN_DIR: where walletd and walletbench are (default: this checkout's release build), so an A/B can
#   run another commit's binaries in the same session.
#   WALLETD_ARGS (environment): extra walletd arguments, e.g. "--config small-segments.toml".
#   WALLETBENCH_ARGS (environment): extra walletbench arguments, e.g. "--rate 300000" for open loop.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
partitions="${1:?usage: scripts/bench-cluster.sh PARTITIONS [RUNS] [SECONDS] [BIN_DIR]}"
runs="${2:-2}"
seconds="${3:-10}"
bin="${4:-}"
if [ -z "$bin" ]; then
    . scripts/setup.sh
    wallet_build
    bin="$CARGO_TARGET_DIR/release"
fi
dir="$(mktemp -d /tmp/wallet-bench-cluster.XXXXXX)"
pids=()
stop() {
    if [ "${#pids[@]}" -gt 0 ]; then
        kill -INT "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    pids=()
}
trap 'stop; rm -rf "$dir"' EXIT
cat >"$dir/cluster.toml" <<TOML
cluster_id = "1"
partitions = $partitions
replication_factor = 3

[[nodes]]
id = 1
address = "127.0.0.1:27401"
peer_address = "127.0.0.1:27501"

[[nodes]]
id = 2
address = "127.0.0.1:27402"
peer_address = "127.0.0.1:27502"

[[nodes]]
id = 3
address = "127.0.0.1:27403"
peer_address = "127.0.0.1:27503"
TOML
for run in $(seq 1 "$runs"); do
    rm -rf "$dir"/node-*
    for id in 1 2 3; do
        # shellcheck disable=SC2086 # WALLETD_ARGS is a list of words on purpose.
        "$bin/walletd" --cluster-config "$dir/cluster.toml" --node-id "$id" --data-dir "$dir/node-$id" --no-pin ${WALLETD_ARGS:-} \
            >"$dir/node-$id.log" 2>&1 &
        pids+=($!)
    done
    ready=""
    for _ in $(seq 1 120); do
        if "$bin/walletctl" --addr 127.0.0.1:27401 status --wait-for-leaders 500 >/dev/null 2>&1; then
            ready=1
            break
        fi
    done
    if [ -z "$ready" ]; then
        echo "run $run: the cluster elected no leader for every partition; see $dir/node-*.log" >&2
        tail -n 5 "$dir"/node-*.log >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # WALLETBENCH_ARGS is a list of words on purpose.
    "$bin/walletbench" --addr 127.0.0.1:27401,127.0.0.1:27402,127.0.0.1:27403 --duration "${seconds}s" \
        --batch-size 8000 --connections 3 --inflight 4 --accounts 30000 ${WALLETBENCH_ARGS:-} >"$dir/bench.txt" 2>&1 &
    bench_pid=$!
    # Disk use of the three data directories every 5 s while the load runs (allocated bytes).
    started=$SECONDS
    while kill -0 "$bench_pid" 2>/dev/null; do
        sleep 5
        if kill -0 "$bench_pid" 2>/dev/null; then
            du -s --block-size=1 "$dir"/node-* |
                awk -v t=$((SECONDS - started)) '{s += $1} END {printf "  t=%ss data dirs %.2f GB\n", t, s / 1e9}' >&2
        fi
    done
    wait "$bench_pid" || {
        cat "$dir/bench.txt" >&2
        exit 1
    }
    stop
    logs=$(du -cs --block-size=1 "$dir"/node-*/replica-shard-*/wal "$dir"/node-*/partition-* | tail -1 | awk '{printf "%.2f GB", $1 / 1e9}')
    images=$(cat "$dir"/node-*/replica-shard-*/snapshot-* "$dir"/node-*/partition-*/raft-snapshot 2>/dev/null | wc -c | awk '{printf "%.2f GB", $1 / 1e9}')
    rate=$(awk '/^throughput/ {print $2}' "$dir/bench.txt")
    latency=$(awk '$1 ~ /^(p50|p99|p99\.9|max)$/ {printf "%s %s ", $1, $2}' "$dir/bench.txt")
    apparent=$(du -sb --apparent-size "$dir"/node-* | awk '{s += $1} END {printf "%.2f GB", s / 1e9}')
    allocated=$(du -s --block-size=1 "$dir"/node-* | awk '{s += $1} END {printf "%.2f GB", s / 1e9}')
    echo "partitions $partitions run $run: $rate transfers/s | $latency| data dirs: $allocated allocated, $apparent apparent (logs $logs, snapshot images $images)"
    cp "$dir/bench.txt" "/tmp/bench-cluster-p$partitions-run$run.txt"
    for id in 1 2 3; do
        cp "$dir/node-$id.log" "/tmp/bench-cluster-p$partitions-run$run-node-$id.log"
    done
done
