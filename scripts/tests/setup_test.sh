#!/usr/bin/env bash
# Tests what scripts/setup.sh decides about the machine, without uninstalling anything: each case runs
# in a private mount namespace where the libclang files are hidden (an overlay over each folder that
# holds them, with the files removed in the overlay only), and a recording stand-in for `apt-get` comes
# first on PATH. The look-alike `libclang-cpp.so.N` (Debian's libclang-cpp14, the C++ API, which
# bindgen cannot load) stays visible: it once made setup skip libclang-dev on a fresh machine.
#
# Cases:
#   1. libclang hidden, only the look-alike left: setup must run `apt-get install ... libclang-dev`.
#   2. libclang visible: setup must not call apt-get at all.
#   3. libclang hidden but LIBCLANG_PATH names a folder with libclang.so: setup must not install it.
#   4. libclang hidden and the stand-in apt-get "installs" nothing: sourcing setup must fail loudly.
# Needs root or unprivileged user namespaces (for `unshare`); CI runs as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

unshare_cmd=(unshare --mount --propagation private)
if [ "$(id -u)" -ne 0 ]; then unshare_cmd=(unshare --map-root-user --mount --propagation private); fi

# Every file clang-sys might load: libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*, except
# the libclang-cpp look-alike.
libclang_files() {
    find /usr /lib /opt -xdev \( -name 'libclang.so*' -o -name 'libclang-*.so*' \) ! -name 'libclang-cpp*' \
        \( -type f -o -type l \) 2>/dev/null || true
}
mapfile -t files < <(libclang_files)
if [ "${#files[@]}" -eq 0 ]; then
    echo "setup_test: no libclang on this machine; run scripts/setup.sh first" >&2
    exit 1
fi
mapfile -t dirs < <(printf '%s\n' "${files[@]}" | xargs -n1 dirname | sort -u)

# Runs one case in a fresh namespace. $1: hide libclang (1/0); $2: the stand-in apt-get creates
# libclang.so on "install" (1/0); $3: LIBCLANG_PATH to set, or empty. Prints the recorded apt-get
# calls, then "source-exit N".
run_case() {
    local hide="$1" stub_installs="$2" libclang_path="$3"
    local scratch
    scratch="$(mktemp -d)"
    mkdir -p "$scratch/bin" "$scratch/fake-libclang"
    : > "$scratch/fake-libclang/libclang.so"
    cat > "$scratch/bin/apt-get" <<STUB
#!/usr/bin/env bash
echo "apt-get \$*" >> "$scratch/calls"
if [ "$stub_installs" = 1 ] && [ "\$1" = install ]; then
    for arg in "\$@"; do
        if [ "\$arg" = libclang-dev ]; then : > "$scratch/installed-libclang/libclang.so"; fi
    done
fi
exit 0
STUB
    chmod +x "$scratch/bin/apt-get"
    : > "$scratch/calls"
    "${unshare_cmd[@]}" bash -c '
        set -euo pipefail
        scratch="$1" hide="$2" libclang_path="$3" root="$4"; shift 4
        mkdir -p "$scratch/installed-libclang"
        if [ "$hide" = 1 ]; then
            mount -t tmpfs tmpfs "$scratch/installed-libclang"
            n=0
            for dir in "$@"; do
                n=$((n + 1))
                mkdir -p "$scratch/overlay-$n"
                mount -t tmpfs tmpfs "$scratch/overlay-$n"
                mkdir "$scratch/overlay-$n/upper" "$scratch/overlay-$n/work"
                mount -t overlay overlay \
                    -o "lowerdir=$dir,upperdir=$scratch/overlay-$n/upper,workdir=$scratch/overlay-$n/work" "$dir"
                find "$dir" -maxdepth 1 \( -name "libclang.so*" -o -name "libclang-*.so*" \) ! -name "libclang-cpp*" \
                    -exec rm -f {} +
            done
            # Where a real install would put the library: the stand-in writes it here.
            llvm_lib="$(ls -d /usr/lib/llvm-*/lib 2>/dev/null | head -1)"
            if [ -n "$llvm_lib" ]; then mount --bind "$scratch/installed-libclang" "$llvm_lib"; fi
        fi
        export PATH="$scratch/bin:$PATH"
        if [ -n "$libclang_path" ]; then export LIBCLANG_PATH="$libclang_path"; else unset LIBCLANG_PATH; fi
        cd "$root"
        set +e
        ( set -euo pipefail; . scripts/setup.sh ) >/dev/null 2>"$scratch/stderr"
        echo "source-exit $?"
    ' bash "$scratch" "$hide" "$libclang_path" "$root" "${dirs[@]}" > "$scratch/result"
    cat "$scratch/calls" "$scratch/result"
    if [ "${SETUP_TEST_VERBOSE:-}" = 1 ]; then cat "$scratch/stderr" >&2; fi
    rm -rf "$scratch"
}

passed=0
failed=0
check() {
    local name="$1" ok="$2" output="$3"
    if [ "$ok" = 1 ]; then
        passed=$((passed + 1)); echo "test $name ... ok"
    else
        failed=$((failed + 1)); echo "test $name ... FAILED"; printf '%s\n' "$output" | sed 's/^/    /'
    fi
}

out="$(run_case 1 1 "")"
ok=0
if grep -Eq '^apt-get install .*libclang-dev' <<<"$out" && grep -q '^source-exit 0$' <<<"$out"; then ok=1; fi
check "hidden_libclang_with_look_alike_installs_libclang_dev" "$ok" "$out"

out="$(run_case 0 1 "")"
ok=0
if ! grep -q '^apt-get' <<<"$out" && grep -q '^source-exit 0$' <<<"$out"; then ok=1; fi
check "visible_libclang_calls_no_apt_get" "$ok" "$out"

# LIBCLANG_PATH must point at a folder visible inside the namespace: the stand-in's own fake library.
out="$(
    scratch_lib="$(mktemp -d)"; : > "$scratch_lib/libclang.so"
    run_case 1 1 "$scratch_lib"
    rm -rf "$scratch_lib"
)"
ok=0
if ! grep -q 'libclang-dev' <<<"$out" && grep -q '^source-exit 0$' <<<"$out"; then ok=1; fi
check "libclang_path_is_honoured" "$ok" "$out"

out="$(run_case 1 0 "")"
ok=0
if grep -Eq '^apt-get install .*libclang-dev' <<<"$out" && ! grep -q '^source-exit 0$' <<<"$out"; then ok=1; fi
check "install_that_brings_no_library_fails_loudly" "$ok" "$out"

echo "setup_test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
