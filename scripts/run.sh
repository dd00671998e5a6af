#!/usr/bin/env bash
# The main job on a fresh machine: builds everything (release, the same build as the tests), starts one wallet node on loopback
# (binary protocol on 127.0.0.1:7400, HTTP/JSON API and /metrics on 127.0.0.1:8400) with its data in
# ./data, shows a first deposit and transfer with walletctl, then keeps serving until
# Ctrl-C (SIGINT), which stops the node cleanly. Extra arguments go to walletd.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
wallet_build
bin="$CARGO_TARGET_DIR/release"
addr="127.0.0.1:7400"

"$bin/walletd" --data-dir ./data --listen "$addr" "$@" &
walletd_pid=$!
trap 'kill -INT $walletd_pid 2>/dev/null; wait $walletd_pid' INT TERM

for _ in $(seq 1 300); do
    if "$bin/walletctl" --addr "$addr" status --wait-for-leaders 100 >/dev/null 2>&1; then break; fi
    if ! kill -0 "$walletd_pid" 2>/dev/null; then echo "walletd exited" >&2; exit 1; fi
    sleep 0.1
done

ctl() { echo "\$ walletctl $*"; "$bin/walletctl" --addr "$addr" "$@" || true; }
echo
echo "== a first deposit and transfer (account 1 is the external USD funding account) =="
ctl account create --id 1 --ledger USD --external
ctl account create --id 2 --ledger USD
ctl account create --id 3 --ledger USD
ctl transfer --from 1 --to 2 --amount 100.00 --ledger USD
ctl transfer --from 2 --to 3 --amount 12.34 --ledger USD
ctl balance 2
ctl history 2
echo
echo "walletd is serving on $addr, and HTTP on 127.0.0.1:8400 (data in ./data)."
echo "Try: $bin/walletctl --addr $addr balance 3    or: curl http://127.0.0.1:8400/v1/accounts/3"
echo "Press Ctrl-C to stop it cleanly."
wait "$walletd_pid"
