#!/usr/bin/env bash
# Shared set-up for every project command: installs what a fresh Debian machine lacks for the build and
# the tests, and points cargo at one target directory outside the checkout, so the bundled RocksDB
# compiles once (about 15 minutes cold on 2 cores) and every later build, test and benchmark reuses it.
# Source it: `. scripts/setup.sh`. `scripts/tests/setup_test.sh` checks what it decides.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wallet-target}"

# The library bindgen (clang-sys, behind the rocksdb crate) loads: `libclang.so` or `libclang-N.so`
# (the names Debian's libclang-dev links), in LIBCLANG_PATH or the folders clang-sys searches. Other
# libraries of the llvm family look alike and are not it: `libclang-cpp.so.14` (libclang-cpp14) is the
# C++ API, which bindgen cannot use, so nothing looser than these two names counts.
wallet_libclang_dirs() {
    if [ -n "${LIBCLANG_PATH:-}" ]; then echo "$LIBCLANG_PATH"; fi
    local dir
    for dir in /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib \
        /usr/local/lib /usr/local/llvm*/lib; do
        if [ -d "$dir" ]; then echo "$dir"; fi
    done
}

wallet_has_libclang() {
    local dir file
    while IFS= read -r dir; do
        for file in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so; do
            if [ -e "$file" ]; then return 0; fi
        done
    done < <(wallet_libclang_dirs)
    return 1
}

# The Debian packages the build and the tests use, each with a command or file that shows it is there.
# `apt-get install` runs once, for the missing ones only.
wallet_missing_packages() {
    if ! wallet_has_libclang; then echo libclang-dev; fi
    # The rocksdb crate's build compiles C and C++ through the cc crate (`cc`, `c++`).
    if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then echo g++; fi
    # scripts/tests/setup_test.sh hides files in a private mount namespace.
    command -v unshare >/dev/null 2>&1 || echo util-linux
    command -v mount >/dev/null 2>&1 || echo mount
    command -v find >/dev/null 2>&1 || echo findutils
    # The metrics test checks /metrics with `promtool check metrics`; the HTTP benchmark uses wrk.
    command -v promtool >/dev/null 2>&1 || echo prometheus
    command -v wrk >/dev/null 2>&1 || echo wrk
    # cluster.sh's HTTP demo, bench-http.sh and bench-latency.sh talk to the HTTP edge with curl.
    command -v curl >/dev/null 2>&1 || echo curl
    # Schemathesis (the HTTP API test) is installed from PyPI into a venv.
    command -v python3 >/dev/null 2>&1 || echo python3
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || echo python3-venv
}

# Schemathesis, the property-based API tester the HTTP test runs, in a venv under the target
# directory (pinned, so every machine runs the same one); found by running it.
WALLET_SCHEMATHESIS_VERSION="4.32.5"
wallet_install_schemathesis() {
    local venv="$CARGO_TARGET_DIR/schemathesis-venv"
    export WALLET_SCHEMATHESIS="$venv/bin/schemathesis"
    if "$WALLET_SCHEMATHESIS" --version 2>/dev/null | grep -q "$WALLET_SCHEMATHESIS_VERSION"; then return 0; fi
    echo "setup: installing schemathesis $WALLET_SCHEMATHESIS_VERSION into $venv" >&2
    mkdir -p "$CARGO_TARGET_DIR"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
        "schemathesis==$WALLET_SCHEMATHESIS_VERSION" >&2
}

wallet_install_missing() {
    local missing
    missing="$(wallet_missing_packages | tr '\n' ' ')"
    missing="${missing% }"
    if [ -z "$missing" ]; then return 0; fi
    echo "setup: installing missing Debian packages: $missing" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: apt-get is not available; install these packages by hand: $missing" >&2
        return 1
    fi
    local sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    # shellcheck disable=SC2086 # the package list is meant to split into words
    $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

if ! wallet_install_missing; then
    echo "setup: could not install what the build needs" >&2
    return 1 2>/dev/null || exit 1
fi
if ! wallet_install_schemathesis; then
    echo "setup: could not install schemathesis from PyPI" >&2
    return 1 2>/dev/null || exit 1
fi
if ! wallet_has_libclang; then
    echo "setup: libclang-dev is installed but no libclang.so or libclang-N.so was found in: $(wallet_libclang_dirs | tr '\n' ' ')" >&2
    return 1 2>/dev/null || exit 1
fi

# The one build every project command runs: the same packages, targets and features each time, so the
# test suite, the node scripts and benchmarks share every artifact (a narrower `-p tools --bins` build
# resolves features differently and recompiles io-uring, wal, engine and tools on each switch).
wallet_build() {
    cargo build --release --workspace --all-targets --locked
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not on PATH; install Rust (rustup) first" >&2
    return 1 2>/dev/null || exit 1
fi
