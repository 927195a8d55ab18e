#!/usr/bin/env bash
# Builds xfer for Windows and macOS from Linux, and holds each target to
# clippy with -D warnings (tests included):
#   x86_64-pc-windows-gnu    clippy + a real xfer.exe (mingw-w64)
#   aarch64-apple-darwin     clippy + a real binary (cargo-zigbuild; no s3)
#   x86_64-apple-darwin      clippy + a real binary (cargo-zigbuild; no s3)
#   x86_64-pc-windows-msvc   clippy only (no MSVC linker here; mingw's gcc
#                            builds aws-lc's C code, llvm-lib archives it)
# The portable storage core (cap-std) is also linted on Linux with the
# portable-io feature.
#
#   scripts/cross-check.sh            debug builds (what CI runs)
#   scripts/cross-check.sh --release  release builds, with their sizes
#
# Installs what it needs when missing: the rustup targets, mingw-w64 and
# llvm (Debian packages), ziglang and cargo-zigbuild (PyPI, in a venv under
# ~/.cache/xfer). When one of those cannot be had (no network), it prints
# one loud line saying the cross-check did not run and why, and exits 0;
# a compile error or a warning on any target exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
build_flags=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    build_flags=(--release)
fi

not_run() {
    echo "!!!!! CROSS-CHECK DID NOT RUN: $* !!!!!" >&2
    exit 0
}

apt_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@"; } \
        >/dev/null 2>&1
}

targets=(x86_64-pc-windows-gnu x86_64-pc-windows-msvc aarch64-apple-darwin x86_64-apple-darwin)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t" >/dev/null 2>&1 \
        || not_run "rustup could not add the $t standard library"
done
command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64-posix \
    || not_run "could not install gcc-mingw-w64-x86-64-posix (apt-get)"
command -v llvm-lib >/dev/null || apt_install llvm || not_run "could not install llvm (apt-get), for llvm-lib"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/xfer/zig-venv"
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q ziglang cargo-zigbuild; } >/dev/null 2>&1 \
        || not_run "could not install ziglang and cargo-zigbuild from PyPI into $venv"
fi
export PATH="$venv/bin:$PATH"

lint=(--locked --all-targets -- -D warnings)
report=()
step() { # name, then the command; reports its time
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    "$@"
    report+=("$(printf '%-26s %4ss' "$name" $((SECONDS - start)))")
}

step "linux portable-io" cargo clippy --features portable-io "${lint[@]}"

step "x86_64-pc-windows-gnu" bash -c '
    cargo clippy --target x86_64-pc-windows-gnu "$@" &&
    cargo build --locked --target x86_64-pc-windows-gnu '"${build_flags[*]}" _ "${lint[@]}"

# aws-lc's C code wants a C compiler that targets MSVC's ABI; mingw's gcc
# compiles it well enough to type-check and lint the Rust on top.
step "x86_64-pc-windows-msvc (check)" env CC_x86_64_pc_windows_msvc=x86_64-w64-mingw32-gcc \
    AR_x86_64_pc_windows_msvc=llvm-lib cargo clippy --target x86_64-pc-windows-msvc "${lint[@]}"

# rustc warns that xcrun (Xcode) is missing when it links: zig brings the
# macOS SDK's libc stubs itself, and the binaries link and are real Mach-O
# files. It has no Apple frameworks, though, and the S3 client's TLS
# verifier links Security.framework: the macOS binaries built here leave
# out the `s3` feature (linted with it all the same; a build on a Mac has it).
for t in aarch64-apple-darwin x86_64-apple-darwin; do
    step "$t" bash -c '
        cargo-zigbuild clippy --target "$0" "$@" &&
        cargo-zigbuild zigbuild --locked --no-default-features --target "$0" '"${build_flags[*]}" "$t" "${lint[@]}"
done

echo "== cross-check passed ($profile)"
printf '%s\n' "${report[@]}"
for f in target/x86_64-pc-windows-gnu/$profile/xfer.exe target/aarch64-apple-darwin/$profile/xfer \
    target/x86_64-apple-darwin/$profile/xfer target/$profile/xfer; do
    [ -f "$f" ] || continue
    kind=$(command -v file >/dev/null && file -b "$f" | cut -d, -f1-2 || true)
    awk -v f="$f" -v n="$(stat -c %s "$f")" -v k="$kind" 'BEGIN { printf "%-48s %6.1f MiB  %s\n", f, n / 1048576, k }'
done
exit 0
