#!/usr/bin/env bash
# Runs the Windows build where it can run here: under Wine.
#   1. the library's unit tests, built for x86_64-pc-windows-gnu;
#   2. xfer.exe as a client of a Linux `xfer serve`: push, ls, pull, rm;
#   3. xfer.exe as the server, a Linux client pushing and pulling through
#      it, with names Windows cannot hold (refused, exit 4) and names that
#      differ only by case (Wine folds case as Windows does: refused).
# Every file is compared byte for byte.
#
# Wine 8 (Debian 12) lacks bcryptprimitives.dll, which Rust's standard
# library calls for randomness (ProcessPrng) since Rust 1.78; a ten-line
# stand-in that calls RtlGenRandom is built with mingw into the Wine
# prefix (never shipped). Installs wine64 when missing; when it cannot,
# prints one loud line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

not_run() {
    echo "!!!!! WINE CHECK DID NOT RUN: $* !!!!!" >&2
    exit 0
}
if ! command -v wine >/dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq wine64; } \
        >/dev/null 2>&1 || not_run "could not install wine64 (apt-get)"
fi
command -v x86_64-w64-mingw32-gcc >/dev/null || not_run "no mingw-w64 (scripts/cross-check.sh installs it)"

work=$(mktemp -d)
server=""
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    wineserver -k 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="

echo "== a Wine prefix, with a bcryptprimitives.dll stand-in"
cat >"$work/bcp.c" <<'EOF'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
EOF
printf 'LIBRARY bcryptprimitives\nEXPORTS\n  ProcessPrng\n' >"$work/bcp.def"
x86_64-w64-mingw32-gcc -O2 -shared -o "$work/bcryptprimitives.dll" "$work/bcp.c" "$work/bcp.def" -ladvapi32
wineboot -i >/dev/null 2>&1 || true
cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"

echo "== unit tests of the Windows build, under Wine"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine cargo test --locked --quiet --target x86_64-pc-windows-gnu --lib

cargo build --locked --quiet --target x86_64-pc-windows-gnu
cargo build --locked --quiet
exe="$PWD/target/x86_64-pc-windows-gnu/debug/xfer.exe"
linux="$PWD/target/debug/xfer"
cd "$work"

start_server() { # log file, then the command; sets $server and $addr
    local log=$1 port=""
    shift
    "$@" 2>"$log" &
    server=$!
    for _ in $(seq 1 300); do
        port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { cat "$log" >&2; echo "the server did not start" >&2; exit 1; }
    addr="127.0.0.1:$port"
}
expect_code() { # wanted exit code, then the command
    local want=$1 got=0
    shift
    "$@" || got=$?
    [ "$got" -eq "$want" ] || { echo "exit $got, wanted $want: $*" >&2; exit 1; }
}

"$linux" keygen --dir certs >/dev/null
mkdir -p src/sub
head -c $((8 * 1024 * 1024 + 123)) /dev/urandom >src/big.bin
echo "hello from Linux" >src/sub/a.txt
: >src/sub/empty

echo "== xfer.exe against a Linux server: push, ls, pull, rm"
start_server linux-serve.log "$linux" serve --listen 127.0.0.1:0 --root linux-root --certs certs
wine "$exe" push "$addr" src --certs certs
cmp src/big.bin linux-root/src/big.bin && cmp src/sub/a.txt linux-root/src/sub/a.txt
wine "$exe" ls "$addr" src --certs certs | grep -q big.bin
wine "$exe" pull "$addr" src --out pulled-by-exe --certs certs
diff -r src pulled-by-exe/src
wine "$exe" rm "$addr" src/sub/a.txt --certs certs
[ ! -e linux-root/src/sub/a.txt ]
kill "$server"
wait "$server" 2>/dev/null || true
server=""

echo "== a Linux client against xfer.exe serving: push, pull, refused names"
start_server exe-serve.log wine "$exe" serve --listen 127.0.0.1:0 --root exe-root --certs certs
"$linux" push "$addr" src --certs certs
diff -r src exe-root/src
"$linux" pull "$addr" src --out pulled-from-exe --certs certs
diff -r src pulled-from-exe/src
mkdir -p odd
echo device >odd/CON.txt
echo colon >'odd/a:b'
echo upper >odd/README
echo mixed >odd/Readme
expect_code 4 "$linux" push "$addr" odd --certs certs 2>odd.err
grep -q "Windows reserves the device name CON" odd.err
grep -q "Windows does not allow ':'" odd.err
grep -q "odd/Readme: differs only by case from odd/README" odd.err
[ "$(cat exe-root/odd/README)" = upper ] || { echo "README was overwritten" >&2; exit 1; }
echo "== Wine check passed: unit tests, xfer.exe as client and as server"
