#!/usr/bin/env bash
# Failover as clients see it: runs N failovers (SIGSTOP and SIGKILL in turn of partition 0's leader,
# under a bounded load, on a local 3-node cluster of real walletd processes on loopback) and prints
# each one and the distribution (p50, p99, max) of the election time, how long requests to surviving
# nodes waited past the election, the client-visible gap, the no-commit window and the routing
# client's gap. Usage: scripts/bench-failover.sh [N] (default 24). The test asserts its bounds after
# printing, so a build that misses them still reports what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
WALLET_FAILOVERS="${1:-24}" cargo test --release --locked -p tools --test failover -- --nocapture --test-threads 1
