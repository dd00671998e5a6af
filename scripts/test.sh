#!/usr/bin/env bash
# The project's whole test suite, from a fresh machine: installs what the build needs, builds everything
# once in release mode (tests, benchmarks and binaries share that one build), and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# What set-up decides about a machine (libclang present, missing, or only a look-alike), first: seconds.
bash scripts/tests/setup_test.sh
wallet_build
cargo test --release --workspace --locked
