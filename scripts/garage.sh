#!/usr/bin/env bash
# A 3-node Garage cluster on loopback, for xfer's object-store tests and
# benchmarks: replication factor 3, sqlite metadata, every port chosen free,
# everything under one folder.
#
#   scripts/garage.sh start DIR   start it; prints the environment to use
#                                 (also written to DIR/env, to source)
#   scripts/garage.sh stop DIR    stop every node (SIGTERM, then SIGKILL)
#   scripts/garage.sh kill DIR N  SIGKILL node N (1-3), as a failure test
#   scripts/garage.sh install     build garage from crates.io if missing
#                                 (cargo install, about 9 minutes)
#
# The bucket is `xfer`; the key is allowed to read, write and own it.
# Garage is found as $GARAGE, or `garage` on PATH, or ~/.cargo/bin/garage.
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

garage_bin() {
    if [ -n "${GARAGE:-}" ]; then
        echo "$GARAGE"
    elif command -v garage >/dev/null; then
        command -v garage
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        echo "$HOME/.cargo/bin/garage"
    else
        return 1
    fi
}

install() {
    garage_bin >/dev/null && return 0
    echo "== building garage 2.x from crates.io (cargo install, about 9 minutes)" >&2
    cargo install garage --locked --version '^2' --quiet
}

free_ports() { # N: prints N free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start() {
    local dir=$1 g secret i ports rpc s3 admin ids=()
    g=$(garage_bin) || { echo "garage is not installed: run scripts/garage.sh install" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -e "$dir/env" ] || { echo "$dir already holds a cluster: scripts/garage.sh stop $dir first" >&2; exit 1; }
    # Whatever fails from here on, no node is left running.
    trap 'stop "$dir"' ERR
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    read -r -a ports <<<"$(free_ports 9)"
    for i in 1 2 3; do
        rpc=${ports[$((i * 3 - 3))]}
        s3=${ports[$((i * 3 - 2))]}
        admin=${ports[$((i * 3 - 1))]}
        mkdir -p "$dir/node$i/meta" "$dir/node$i/data"
        (umask 077 && cat >"$dir/node$i/garage.toml") <<EOF
metadata_dir = "$dir/node$i/meta"
data_dir = "$dir/node$i/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
        echo "$s3" >"$dir/node$i/s3-port"
        "$g" -c "$dir/node$i/garage.toml" server >"$dir/node$i/log" 2>&1 &
        echo $! >"$dir/node$i/pid"
    done
    for i in 1 2 3; do
        ids+=("$(wait_for_id "$g" "$dir" "$i")")
    done
    for i in 2 3; do
        "$g" -c "$dir/node1/garage.toml" node connect "${ids[$((i - 1))]}" >/dev/null
    done
    for i in 1 2 3; do
        "$g" -c "$dir/node1/garage.toml" layout assign -z "dc$i" -c 1G "${ids[$((i - 1))]%@*}" >/dev/null
    done
    "$g" -c "$dir/node1/garage.toml" layout apply --version 1 >/dev/null
    wait_healthy "$g" "$dir"
    local key id secret_key
    key=$("$g" -c "$dir/node1/garage.toml" key create xfer-tests)
    id=$(sed -n 's/^Key ID: *//p' <<<"$key" | head -n 1)
    secret_key=$(sed -n 's/^Secret key: *//p' <<<"$key" | head -n 1)
    [ -n "$id" ] && [ -n "$secret_key" ] || { echo "could not read the new key: $key" >&2; exit 1; }
    "$g" -c "$dir/node1/garage.toml" bucket create xfer >/dev/null
    "$g" -c "$dir/node1/garage.toml" bucket allow --read --write --owner xfer --key xfer-tests >/dev/null
    (umask 077 && cat >"$dir/env") <<EOF
export AWS_ACCESS_KEY_ID=$id
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/node1/s3-port")
export AWS_REGION=garage
export XFER_TEST_BUCKET=xfer
export XFER_TEST_ENDPOINTS="http://127.0.0.1:$(cat "$dir/node1/s3-port") http://127.0.0.1:$(cat "$dir/node2/s3-port") http://127.0.0.1:$(cat "$dir/node3/s3-port")"
unset AWS_CA_BUNDLE
EOF
    trap - ERR
    cat "$dir/env"
}

wait_for_id() { # garage, dir, node: prints the node's id@addr once it answers
    local out
    for _ in $(seq 1 300); do
        if out=$("$1" -c "$2/node$3/garage.toml" node id -q 2>/dev/null) && [ -n "$out" ]; then
            echo "$out"
            return 0
        fi
        kill -0 "$(cat "$2/node$3/pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "garage node $3 did not start:" >&2
    cat "$2/node$3/log" >&2
    stop "$2"
    exit 1
}

wait_healthy() { # garage, dir: until every node has its role and the layout is in effect
    local status
    for _ in $(seq 1 300); do
        # Read whole: garage aborts on a closed pipe.
        status=$("$1" -c "$2/node1/garage.toml" status 2>/dev/null || true)
        if grep -q "HEALTHY NODES" <<<"$status" && [ "$(grep -c "dc[123]" <<<"$status")" -ge 3 ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "the cluster did not become healthy:" >&2
    "$1" -c "$2/node1/garage.toml" status >&2 || true
    stop "$2"
    exit 1
}

stop() {
    local dir=$1 pid
    for i in 1 2 3; do
        [ -f "$dir/node$i/pid" ] || continue
        pid=$(cat "$dir/node$i/pid")
        kill "$pid" 2>/dev/null || true
    done
    for i in 1 2 3; do
        [ -f "$dir/node$i/pid" ] || continue
        pid=$(cat "$dir/node$i/pid")
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/node$i/pid"
    done
    rm -f "$dir/env"
}

case "${1:-}" in
start) [ $# -eq 2 ] || usage; start "$2" ;;
stop) [ $# -eq 2 ] || usage; stop "$2" ;;
kill) # the pid file goes with the process, so that stop never signals a reused pid
    [ $# -eq 3 ] || usage
    kill -9 "$(cat "$2/node$3/pid")"
    rm -f "$2/node$3/pid"
    ;;
install) install ;;
*) usage ;;
esac
