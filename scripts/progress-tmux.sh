#!/usr/bin/env bash
# Shows that push progress bars render in a real terminal and vanish
# cleanly: a 1 GiB push runs inside tmux; the screen is captured while it
# runs (bars expected) and after (bars gone, summary line present).
# Usage: scripts/progress-tmux.sh [path/to/xfer]   (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "tmux is needed (apt-get install tmux)" >&2; exit 1; }
xfer=${1:-}
if [ -z "$xfer" ]; then
    cargo build --release --locked --quiet
    xfer="$PWD/target/release/xfer"
fi

work=$(mktemp -d)
session="xfer-progress-$$"
cleanup() {
    tmux kill-session -t "$session" 2>/dev/null || true
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$xfer" keygen --dir "$work/certs" > /dev/null
head -c $((1024 * 1024 * 1024)) /dev/zero > "$work/big.bin"
"$xfer" serve --listen 127.0.0.1:0 --root "$work/root" --certs "$work/certs" -q 2> "$work/serve.log" &
server=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/serve.log" | head -n 1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.log" >&2; exit 1; }

tmux new-session -d -s "$session" -x 120 -y 12 \
    "'$xfer' push 127.0.0.1:$port '$work/big.bin' --certs '$work/certs'; echo EXIT=\$?; sleep 60"
during=""
first=""
after=""
for _ in $(seq 1 1200); do   # at most 60 s
    screen=$(tmux capture-pane -p -t "$session")
    # The overall bar appears first (while the file is hashed and probed);
    # keep looking until a screen also shows the file's own bar.
    if [ -z "$during" ] && grep -q "ETA" <<< "$screen"; then
        first=$screen
        grep -q "big.bin" <<< "$screen" && during=$screen
    fi
    if grep -q "EXIT=" <<< "$screen"; then
        after=$screen
        break
    fi
    sleep 0.05
done

during=${during:-${first:-}}
echo "--- screen during the push ---"
echo "$during"
echo "--- screen after the push ---"
echo "$after"
[ -n "$during" ] || { echo "FAIL: no progress bar was seen" >&2; exit 1; }
grep -q "big.bin" <<< "$during" || { echo "FAIL: no per-file bar" >&2; exit 1; }
grep -q "EXIT=0" <<< "$after" || { echo "FAIL: the push did not succeed" >&2; exit 1; }
grep -q "pushed 1 file (1024.0 MiB)" <<< "$after" || { echo "FAIL: no summary line" >&2; exit 1; }
if grep -qE "ETA|\[=" <<< "$after"; then
    echo "FAIL: progress bars were left on the screen" >&2
    exit 1
fi
echo "progress OK: bars rendered during the push and were cleared after it"
