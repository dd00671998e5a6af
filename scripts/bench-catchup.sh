#!/usr/bin/env bash
# A follower catching up through a large snapshot: a 3-node cluster on loopback (3 partitions,
# replication factor 3) under the closed-loop load of bench-cluster.sh; node 3 is paused (SIGSTOP)
# from PAUSE_AT to PAUSE_AT + PAUSE seconds while the other two go on committing and compacting, then
# resumed. Each run prints how long node 3 took after SIGCONT to apply, on every partition, what the
# leaders had committed at that moment; the snapshots sent and received (sizes, chunks); any peer
# message dropped for its size; throughput; and whether all replicas agree once the load stops.
# BENCHMARKS.md section 14 has the figures. Node logs are copied to /tmp/bench-catchup-runN-node-I.log.
# Usage: scripts/bench-catchup.sh [RUNS] [PAUSE_AT] [PAUSE] [AFTER] [BIN_DIR]
#   AFTER: seconds of load after the resume (the catch-up must happen within them).
#   BIN_DIR: where walletd, walletbench and walletctl are (default: this checkout's release build).
#   REPLICATION (environment): lines for the cluster file's [replication] table, separated by ';'
#   (default "snapshot_interval_entries = 1024", so the leaders compact past node 3 during the pause).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1}"
pause_at="${2:-10}"
pause="${3:-50}"
after="${4:-40}"
bin="${5:-}"
if [ -z "$bin" ]; then
    . scripts/setup.sh
    wallet_build
    bin="$CARGO_TARGET_DIR/release"
fi
replication="${REPLICATION-snapshot_interval_entries = 1024}"
dir="$(mktemp -d /tmp/wallet-bench-catchup.XXXXXX)"
pids=()
stop() {
    if [ "${#pids[@]}" -gt 0 ]; then
        kill -CONT "${pids[@]}" 2>/dev/null || true
        kill -INT "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    pids=()
}
trap 'stop; rm -rf "$dir"' EXIT
{
    printf 'cluster_id = "1"\npartitions = 3\nreplication_factor = 3\n'
    for id in 1 2 3; do
        printf '\n[[nodes]]\nid = %s\naddress = "127.0.0.1:2740%s"\npeer_address = "127.0.0.1:2750%s"\n' "$id" "$id" "$id"
    done
    printf '\n[replication]\n'
    tr ';' '\n' <<<"$replication"
} >"$dir/cluster.toml"
# "partition applied" of node 3, and "partition commit" as the most any node reports, from a status.
applied_of_node_3() { awk '/^node /{node=$2} node=="3:" && /^  partition /{print $2+0, $13}' "$1"; }
commit_most() { awk '/^  partition /{if ($11+0 > c[$2+0]+0) c[$2+0]=$11} END{for (p in c) print p, c[p]}' "$1"; }
for run in $(seq 1 "$runs"); do
    rm -rf "$dir"/node-*
    for id in 1 2 3; do
        "$bin/walletd" --cluster-config "$dir/cluster.toml" --node-id "$id" --data-dir "$dir/node-$id" --no-pin \
            >"$dir/node-$id.log" 2>&1 &
        pids+=($!)
    done
    if ! "$bin/walletctl" --addr 127.0.0.1:27401 status --wait-for-leaders 30000 >/dev/null 2>&1; then
        echo "run $run: the cluster elected no leader for every partition; see $dir/node-*.log" >&2
        exit 1
    fi
    "$bin/walletbench" --addr 127.0.0.1:27401,127.0.0.1:27402,127.0.0.1:27403 \
        --duration "$((pause_at + pause + after))s" --batch-size 8000 --connections 3 --inflight 4 --accounts 30000 \
        >"$dir/bench.txt" 2>&1 &
    bench_pid=$!
    sleep "$pause_at"
    kill -STOP "${pids[2]}"
    sleep "$pause"
    kill -CONT "${pids[2]}"
    resumed=$(date +%s.%N)
    "$bin/walletctl" --addr 127.0.0.1:27401 status >"$dir/at-resume.txt" 2>&1 || true
    commit_most "$dir/at-resume.txt" | sort -n >"$dir/targets.txt"
    caught=""
    while kill -0 "$bench_pid" 2>/dev/null; do
        "$bin/walletctl" --addr 127.0.0.1:27403 status >"$dir/now.txt" 2>&1 || true
        if join "$dir/targets.txt" <(applied_of_node_3 "$dir/now.txt" | sort -n) | awk '$3 < $2 {behind=1} END{exit behind}' &&
            [ "$(applied_of_node_3 "$dir/now.txt" | wc -l)" -eq 3 ]; then
            caught=$(awk -v a="$resumed" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
            break
        fi
        sleep 0.25
    done
    wait "$bench_pid" || true
    throughput=$(grep -m1 -E '^throughput' "$dir/bench.txt" | tr -s ' ' || echo "throughput ?")
    errors=$(grep -m1 -E '^errors' "$dir/bench.txt" | tr -s ' ' || true)
    # After the load: every replica of every partition at the same digest (30 s at most).
    agreed=""
    for _ in $(seq 1 60); do
        if "$bin/walletctl" --addr 127.0.0.1:27401 status >"$dir/end.txt" 2>&1 &&
            [ "$(awk '/^  partition /{print $2, $NF}' "$dir/end.txt" | sort -u | wc -l)" -eq 3 ] &&
            [ "$(grep -c '^  partition ' "$dir/end.txt")" -eq 9 ]; then
            agreed=1
            break
        fi
        sleep 0.5
    done
    echo "run $run: paused node 3 for ${pause} s after ${pause_at} s of load; ${throughput}; ${errors}"
    echo "  leaders' commit at resume (partition index): $(tr '\n' ' ' <"$dir/targets.txt")"
    if [ -n "$caught" ]; then
        echo "  node 3 applied all of it after ${caught} s"
    else
        echo "  node 3 applied all of it: NOT within the ${after} s of load left"
    fi
    grep -h -o 'sending the snapshot at index [0-9]* ([0-9]* bytes) to node 3' "$dir"/node-[12].log | sort | uniq -c |
        sed 's/^/  /' || true
    grep -h -o "received node [0-9]*'s snapshot at index [0-9]* ([0-9]* bytes in [0-9]* chunks)" "$dir/node-3.log" |
        sed 's/^/  node 3 /' || true
    installs=$(grep 'installed snapshot' "$dir/node-3.log" | while read -r stamp rest; do
        part=$(grep -o 'partition [0-9]*: installed snapshot at index [0-9]*' <<<"$rest" | awk '{print "p" $2 "@" $7}')
        awk -v a="$resumed" -v b="$(date -d "$stamp" +%s.%N)" -v p="$part" 'BEGIN{printf "%s +%.1fs ", p, b - a}'
    done)
    echo "  node 3 installed snapshots (partition:@index, seconds after the resume): ${installs:-none}"
    echo "  peer batches dropped for their size: $(cat "$dir"/node-*.log | grep -c 'above PEER_FRAME_BYTES_MAX' || true)"
    if [ -n "$agreed" ]; then
        echo "  replicas agree after the load: yes"
    else
        echo "  replicas agree after the load: NO"
        sed 's/^/    /' "$dir/end.txt"
    fi
    for id in 1 2 3; do
        cp "$dir/node-$id.log" "/tmp/bench-catchup-run$run-node-$id.log"
    done
    stop
done
