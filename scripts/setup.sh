#!/usr/bin/env bash
# Shared set-up for every project command: installs what a fresh Debian machine lacks for the build and
# points cargo at one target directory outside the checkout, so the bundled RocksDB compiles once
# (about 15 minutes cold on 2 cores) and every later build, test and benchmark reuses it.
# Source it: `. scripts/setup.sh`.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wallet-target}"

# The rocksdb crate generates its bindings with bindgen, which needs libclang.
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    echo "setup: libclang is missing; installing libclang-dev (needed to build RocksDB)" >&2
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libclang-dev >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not on PATH; install Rust (rustup) first" >&2
    exit 1
fi
