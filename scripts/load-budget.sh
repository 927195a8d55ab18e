#!/usr/bin/env bash
# Honest load against one server: 128 clients at once, each pushing 200
# files of 20 KB (25,600 files, 512 MB), on loopback. Checks that every file
# arrives intact and that the server's peak memory stays under 256 MiB: the
# server-wide --max-memory budget (64 MiB by default) bounds the small files
# it holds for group commit, whatever the number of connections.
#
# usage: scripts/load-budget.sh [XFER_BINARY]   (default: target/debug/xfer)
# Bounded: every client and the whole run are under `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
xfer=$(realpath "${1:-target/debug/xfer}")
clients=128 files=200 size=20000 limit_mib=256
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

"$xfer" keygen --dir certs >/dev/null
python3 - "$clients" "$files" "$size" <<'PY'
import os, sys
clients, files, size = map(int, sys.argv[1:])
for c in range(clients):
    d = f"src/c{c}"
    os.makedirs(d)
    for i in range(files):
        with open(f"{d}/f{i}", "wb") as f:
            f.write(os.urandom(size))
PY

"$xfer" serve --listen 127.0.0.1:0 --root root --certs certs -q 2>serve.log &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" serve.log && break; sleep 0.1; done
addr=$(grep -o "listening on [0-9.:]*" serve.log | awk '{print $3}')
[ -n "$addr" ] || { echo "load-budget: the server did not start"; cat serve.log; exit 1; }

start=$(date +%s.%N)
pids=()
for c in $(seq 0 $((clients - 1))); do
    timeout 300 "$xfer" push "$addr" "src/c$c" --certs certs -q 2>"push$c.log" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
peak_mib=$((peak_kib / 1024))

# Every file, byte for byte (BLAKE3 of both trees, in the same order).
(cd src && find . -type f | sort | xargs "$xfer" hash) >src.b3
(cd root && find . -type f -not -path './.xfer/*' | sort | xargs "$xfer" hash) >root.b3
arrived=$(wc -l <root.b3)

echo "load-budget: $clients clients x $files files x $size bytes in ${secs} s;" \
    "$arrived of $((clients * files)) files arrived; $failed clients failed; server peak RSS $peak_mib MiB"
if [ "$failed" -ne 0 ]; then
    cat push*.log | sort | uniq -c | sort -rn | head -5
    exit 1
fi
cmp -s src.b3 root.b3 || { echo "load-budget: the received tree differs from the sent one"; exit 1; }
[ "$peak_mib" -lt "$limit_mib" ] || { echo "load-budget: server peak RSS $peak_mib MiB >= $limit_mib MiB"; exit 1; }
echo "load-budget: ok"
