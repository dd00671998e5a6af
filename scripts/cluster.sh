#!/usr/bin/env bash
# The main job on a fresh machine: builds everything (release, the same build as the tests) and starts a local 3-node wallet
# cluster on loopback (clients on 127.0.0.1:7401-7403, peers on 127.0.0.1:7501-7503, the HTTP/JSON API
# and /metrics on 127.0.0.1:8401-8403, data in
# ./data/cluster/node-N), 3 partitions each replicated on all three nodes with leaders spread over them.
# It shows a first deposit and transfer sent to node 1 (forwarded to the partition's leader) and the
# status of every partition on every node, then keeps serving until Ctrl-C, which stops every node
# cleanly. Extra arguments go to every walletd.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
wallet_build
bin="$CARGO_TARGET_DIR/release"
dir="./data/cluster"
mkdir -p "$dir"
config="$dir/cluster.toml"
if [ ! -f "$config" ]; then
    cat > "$config" <<TOML
cluster_id = "1"
partitions = 3
replication_factor = 3

[[nodes]]
id = 1
address = "127.0.0.1:7401"
peer_address = "127.0.0.1:7501"
http_address = "127.0.0.1:8401"

[[nodes]]
id = 2
address = "127.0.0.1:7402"
peer_address = "127.0.0.1:7502"
http_address = "127.0.0.1:8402"

[[nodes]]
id = 3
address = "127.0.0.1:7403"
peer_address = "127.0.0.1:7503"
http_address = "127.0.0.1:8403"
TOML
fi

pids=()
for id in 1 2 3; do
    "$bin/walletd" --cluster-config "$config" --node-id "$id" --data-dir "$dir/node-$id" --no-pin "$@" \
        >>"$dir/node-$id.log" 2>&1 &
    pids+=($!)
done
stop() { kill -INT "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM

addr="127.0.0.1:7401"
# Ready means every node answers and all of them name the same leader for every partition, so the
# demo's first transfer and the status below never meet a partition whose election is still running.
ready=""
for _ in $(seq 1 60); do
    if "$bin/walletctl" --addr "$addr" status --wait-for-leaders 500 >/dev/null 2>&1; then ready=1; break; fi
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then echo "a walletd exited; see $dir/node-*.log" >&2; stop; exit 1; fi
    done
done
if [ -z "$ready" ]; then
    echo "the cluster did not elect a leader for every partition within 30 s; see $dir/node-*.log" >&2
    "$bin/walletctl" --addr "$addr" status >&2 || true
    stop
    exit 1
fi

ctl() { echo "\$ walletctl $*"; "$bin/walletctl" --addr "$addr" "$@" || true; }
echo
# Accounts 1, 5 and 7 live in the same partition (2 of 3): a transfer moves money within one partition.
echo "== a first deposit and transfer, sent to node 1 (account 1 is the external USD funding account) =="
ctl account create --id 1 --ledger USD --external
ctl account create --id 5 --ledger USD
ctl account create --id 7 --ledger USD
ctl transfer --from 1 --to 5 --amount 100.00 --ledger USD
ctl transfer --from 5 --to 7 --amount 12.34 --ledger USD
ctl balance 5
ctl history 5
ctl status
echo
echo "== the same over HTTP, through node 2 (the seed's API; the key is a UUIDv7) =="
if command -v curl >/dev/null 2>&1; then
    key="$(python3 scripts/uuid7.py)"
    echo "\$ curl -X POST http://127.0.0.1:8402/v1/wallet/transfer -H 'Idempotency-Key: $key' ..."
    curl -sS -X POST http://127.0.0.1:8402/v1/wallet/transfer -H "Idempotency-Key: $key" \
        -H 'Content-Type: application/json' \
        -d '{"from_account": 5, "to_account": 7, "amount": "1.00", "currency": "USD"}' || true
    echo
    curl -sS http://127.0.0.1:8403/v1/accounts/7 || true
    echo
fi
echo
echo "A 3-node cluster is serving on 127.0.0.1:7401-7403, HTTP on 127.0.0.1:8401-8403 (data and logs in $dir)."
echo "Try: $bin/walletctl --addr 127.0.0.1:7403 balance 7    Press Ctrl-C to stop every node cleanly."
wait "${pids[@]}"
