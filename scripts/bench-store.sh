#!/usr/bin/env bash
# Object-store benchmark: `xfer serve --store` against rclone, both talking
# to the same 3-node Garage cluster on loopback (scripts/garage.sh), for
# one large file and a tree of small files, pushed into the bucket and
# pulled back out. Run by `scripts/bench.sh --only store`, or alone:
#
#   scripts/bench-store.sh [--quick] [--runs N]
#
# - xfer: client -> TLS 1.3 -> `xfer serve --store s3://xfer/bench` (one
#   server, BLAKE3 verified end to end, multipart parts hashed as BLAKE3
#   subtrees) -> Garage node 1.
# - rclone (Debian's): client -> Garage node 1 directly, its defaults plus
#   --transfers 32 for the tree (the setting users reach for with many small
#   files), configured from the environment (no config file is written).
# Tools alternate run by run; every run writes new keys (or a new local
# folder), and every pulled tree is compared with its source with BLAKE3.
# The median of the runs is reported, with the ratio rclone/xfer (above 1:
# xfer faster). Everything lives in one temporary folder, removed on exit;
# the Garage cluster is stopped. Needs garage (scripts/garage.sh install)
# and rclone (apt-get install rclone; installed when missing and root).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0 RUNS=""
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-store: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-2} BIG_MIB=256 SMALL_N=2000
else
    RUNS=${RUNS:-3} BIG_MIB=1024 SMALL_N=10000
fi
log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }

if ! command -v rclone >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq rclone >/dev/null
    else
        echo "bench-store: rclone is missing (apt-get install rclone)" >&2
        exit 1
    fi
fi
"$REPO/scripts/garage.sh" install
if [ -z "${XFER_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --locked --quiet)
    XFER_BIN=$REPO/target/release/xfer
fi

W=$(mktemp -d "${BENCH_DIR:-/tmp}/xfer-bench-store.XXXXXX")
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    "$REPO/scripts/garage.sh" stop "$W/garage" >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

log "== starting a 3-node Garage cluster"
"$REPO/scripts/garage.sh" start "$W/garage" >/dev/null
# shellcheck disable=SC1091
. "$W/garage/env"
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT=$AWS_ENDPOINT_URL
export RCLONE_CONFIG_G_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RCLONE_CONFIG_G_REGION=$AWS_REGION

log "== generating ${BIG_MIB} MiB and ${SMALL_N} x 4 KiB"
mkdir -p "$W/src"
head -c $((BIG_MIB << 20)) /dev/urandom > "$W/src/big.bin"
python3 - "$W/src/small" "$SMALL_N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.bin" % i), "wb") as f:
        f.write(os.urandom(4096))
PY

"$XFER_BIN" keygen --dir "$W/certs" >/dev/null 2>&1
"$XFER_BIN" serve --store s3://xfer/bench --listen 127.0.0.1:0 --certs "$W/certs" 2> "$W/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/serve.log" && break; sleep 0.1; done
ADDR=$(grep -o 'listening on [0-9.:]*' "$W/serve.log" | cut -d' ' -f3)
[ -n "$ADDR" ] || { cat "$W/serve.log" >&2; exit 1; }
X=("$XFER_BIN" --quiet)
CERTS=(--certs "$W/certs")

# timed CMD...: runs it, prints the elapsed seconds.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >> "$W/runs.log" 2>&1 || { log "failed: $*"; tail -5 "$W/runs.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
same_tree() { # SRC DST: BLAKE3 of every file, compared
    (cd "$1" && find . -type f | sort | xargs "$XFER_BIN" hash) > "$W/a.sum"
    (cd "$2" && find . -type f | sort | xargs "$XFER_BIN" hash) > "$W/b.sum"
    cmp -s "$W/a.sum" "$W/b.sum" || { log "pulled data differs from its source: $2"; exit 1; }
}

declare -A T
for run in $(seq "$RUNS"); do
    log "== run $run of $RUNS"
    # The big file.
    T[xfer_push_big]+="$(timed "${X[@]}" push "$ADDR" "$W/src/big.bin" --to "x$run" "${CERTS[@]}") "
    T[rclone_push_big]+="$(timed rclone copyto "$W/src/big.bin" "g:xfer/r$run/big.bin") "
    T[xfer_pull_big]+="$(timed "${X[@]}" pull "$ADDR" "x$run/big.bin" --out "$W/xp$run" "${CERTS[@]}") "
    T[rclone_pull_big]+="$(timed rclone copyto "g:xfer/r$run/big.bin" "$W/rp$run/big.bin") "
    cmp -s "$W/src/big.bin" "$W/xp$run/big.bin" || { log "xfer pulled other bytes"; exit 1; }
    cmp -s "$W/src/big.bin" "$W/rp$run/big.bin" || { log "rclone pulled other bytes"; exit 1; }
    rm -rf "$W/xp$run" "$W/rp$run"
    # The tree of small files.
    T[xfer_push_small]+="$(timed "${X[@]}" push "$ADDR" "$W/src/small" --to "x$run" "${CERTS[@]}") "
    T[rclone_push_small]+="$(timed rclone copy --transfers 32 "$W/src/small" "g:xfer/r$run/small") "
    T[xfer_pull_small]+="$(timed "${X[@]}" pull "$ADDR" "x$run/small" --out "$W/xp$run" "${CERTS[@]}") "
    T[rclone_pull_small]+="$(timed rclone copy --transfers 32 "g:xfer/r$run/small" "$W/rp$run/small") "
    same_tree "$W/src/small" "$W/xp$run/small"
    same_tree "$W/src/small" "$W/rp$run/small"
    rm -rf "$W/xp$run" "$W/rp$run"
done

printf '\n## Object store: xfer serve --store vs rclone, 3-node Garage on loopback (median of %s)\n\n' "$RUNS"
printf '| what | xfer | rclone | rclone/xfer |\n|---|---|---|---|\n'
for what in push_big pull_big push_small pull_small; do
    x=$(echo "${T[xfer_$what]}" | tr ' ' '\n' | grep . | median)
    r=$(echo "${T[rclone_$what]}" | tr ' ' '\n' | grep . | median)
    case $what in
        *big) unit="$BIG_MIB MiB"; xr=$(echo "$BIG_MIB / $x" | bc -l); rr=$(echo "$BIG_MIB / $r" | bc -l)
              rate=$(printf '%.0f MiB/s | %.0f MiB/s' "$xr" "$rr") ;;
        *) unit="$SMALL_N x 4 KiB"; xr=$(echo "$SMALL_N / $x" | bc -l); rr=$(echo "$SMALL_N / $r" | bc -l)
           rate=$(printf '%.0f files/s | %.0f files/s' "$xr" "$rr") ;;
    esac
    printf '| %s %s | %.2f s | %.2f s | %.2f |\n' "${what%_*}" "$unit" "$x" "$r" "$(echo "$r / $x" | bc -l)"
    printf '|  | %s |  |\n' "$rate"
done
