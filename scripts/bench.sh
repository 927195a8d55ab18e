#!/usr/bin/env bash
# Side-by-side benchmark of xfer against socat (TLS 1.3, mutual auth), scp,
# rsync over ssh, tar | ssh, and nc, on loopback (127.0.0.1) only.
#
#   scripts/bench.sh [--quick] [--runs N] [--only SCENARIO[,...]] [--peer-pulls]
#                    [--no-write] [--keep]
#
# Scenarios (see --help): big (one large file, push and pull), small (many
# 4 KiB files), medium (1 MiB files), single (a 1 KiB file as a whole
# command), latency (1 KiB files through scripts/delay_proxy.py, 25 ms each
# way), concurrency (many xfer clients pushing to one server at once),
# store (xfer serve --store against rclone on a 3-node Garage cluster:
# scripts/bench-store.sh, which builds Garage the first time).
#
# How it measures, and why:
# - Every run gets a fresh server process (xfer serve, a per-run sshd, socat,
#   nc) started under GNU time, so the server side's CPU and peak RSS are its
#   own (GNU time's rusage includes reaped children: sshd's session and
#   sftp/scp/rsync/tar children are counted). The server is started and
#   ready before the clock starts; the client command is what is timed.
# - Tools alternate run by run (A B C A B C ...), so drift on a noisy machine
#   hits every tool alike.
# - Every destination is new, and is checked against its source with BLAKE3
#   (`xfer hash`) after the run; a run whose files differ is a failure, not
#   a time. Trees of finished runs are moved aside and deleted at the very
#   end: for minutes after a mass delete, ext4 spends much CPU skipping the
#   recently freed inodes when it allocates new ones (recently_deleted() in
#   the kernel profile), which would slow whichever tool ran next.
# - `sync` runs (untimed) before every timed run. xfer flushes what it
#   receives to disk before it reports success (see README, "What done
#   means"); without the sync it would also pay for flushing the previous
#   tool's writes. The other tools leave their data in the page cache.
#
# Needs root on Debian (installs openssh-server, socat, rsync, netcat-openbsd,
# time when missing). Everything it creates lives in one temporary work dir
# (under $BENCH_DIR or /tmp), removed on exit; /etc/ssh and ~/.ssh are never
# touched. XFER_BIN=/path/to/xfer skips `cargo build --release --locked`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ORIG_ARGS=("$@")
PROXY_PY="$REPO/scripts/delay_proxy.py"
ALL_SCENARIOS=big,small,medium,single,latency,concurrency,store

# ---------------------------------------------------------------- options ---

usage() {
    cat <<EOF
usage: scripts/bench.sh [--quick] [--runs N] [--only LIST] [--peer-pulls] [--no-write] [--keep]

  --quick      small sizes, 3 runs each (about two minutes on 2 cores)
  --runs N     runs per tool and direction (default 5, quick 3; the 1 KiB
               whole-command scenario does 4x as many, 2x in quick mode)
  --only LIST  comma-separated scenarios: $ALL_SCENARIOS
  --peer-pulls in the small and medium scenarios, also time rsync, tar|ssh
               and scp pulling (by default they push and only xfer does both)
  --no-write   print the results but leave BENCHMARKS.md alone
  --keep       keep the work dir (sources, logs, raw results) for inspection

environment: XFER_BIN (use this binary, skip the build), BENCH_DIR (parent of
the work dir, default /tmp), BENCH_SSH_PORT (default 2222)
EOF
}

QUICK=0 RUNS="" ONLY=$ALL_SCENARIOS WRITE=1 KEEP=0 PEER_PULLS=0
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --no-write) WRITE=0 ;;
        --peer-pulls) PEER_PULLS=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for s in ${ONLY//,/ }; do
    case ",$ALL_SCENARIOS," in
        *",$s,"*) ;;
        *) echo "bench: unknown scenario '$s' (known: $ALL_SCENARIOS)" >&2; exit 2 ;;
    esac
done
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# Sizes. Quick mode keeps every scenario but shrinks it.
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-3}
    BIG_MIB=256 SMALL_N=2000 MEDIUM_N=200 TINY_N=200 CONC_N=16 CONC_MIB=16
else
    RUNS=${RUNS:-5}
    BIG_MIB=2048 SMALL_N=10000 MEDIUM_N=1000 TINY_N=1000 CONC_N=64 CONC_MIB=64
fi
case $RUNS in '' | *[!0-9]* | 0) echo "bench: --runs needs a positive number" >&2; exit 2 ;; esac
# A 1 KiB run takes ~0.1 s: more runs give a steadier median.
SINGLE_RUNS=$((RUNS * (QUICK ? 2 : 4)))
SMALL_DIRS=100 MEDIUM_DIRS=10
DELAY_MS=25
SSH_PORT=${BENCH_SSH_PORT:-2222}
HOST=127.0.0.1              # the only address this script ever talks to
TIME_FMT='TIME %e %U %S %M' # GNU time: elapsed, user s, sys s, peak RSS KiB

# Progress goes to stderr, each line stamped with the seconds since the start.
log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "bench: $*"; exit 1; }

# --------------------------------------------------- background processes ---
# Every background process is started as the leader of its own process group
# (setsid, or timeout, which makes its own group) and remembered here until it
# has been reaped, so cleanup can end exactly what this script started.

declare -A GROUPS_LIVE=()
W=""

cleanup() {
    local g
    for g in "${!GROUPS_LIVE[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    for g in "${!GROUPS_LIVE[@]}"; do
        wait_gone "$g" 3 || kill -KILL -- "-$g" 2>/dev/null || true
        wait "$g" 2>/dev/null || true
    done
    if [ -n "$W" ] && [ -d "$W" ]; then
        if [ "$KEEP" = 1 ]; then
            log "bench: work dir kept: $W"
        else
            log "== removing the work dir $W"
            rm -rf "$W"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: true while PID runs (a zombie, exited but not yet reaped, is gone).
alive() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}

# wait_gone PID SECONDS: wait (bounded) for PID to exit.
wait_gone() {
    local deadline=$((SECONDS + $2))
    while alive "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.02
    done
}

# reap PID: collect its exit status (into REAPED) and forget it.
reap() {
    REAPED=0
    wait "$1" 2>/dev/null || REAPED=$?
    unset "GROUPS_LIVE[$1]"
}

# port_listening PORT: a socket listens on 127.0.0.1:PORT or *:PORT. Read from
# /proc so that checking does not open a connection to the server (that would
# count in its CPU figures, and sshd would fork for it).
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# free_port: a port nothing listens on, for servers that cannot pick their
# own (socat, nc). Cheaper than asking Python to bind port 0.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        port_listening "$p" || { echo "$p"; return; }
    done
}

# -------------------------------------------------------------- the setup ---

ensure_packages() {
    local need=()
    [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v ssh-keygen >/dev/null && command -v scp >/dev/null || need+=(openssh-client)
    command -v socat >/dev/null || need+=(socat)
    command -v rsync >/dev/null || need+=(rsync)
    command -v nc.openbsd >/dev/null || need+=(netcat-openbsd)
    [ -x /usr/bin/time ] || need+=(time)
    command -v openssl >/dev/null || need+=(openssl)
    command -v pgrep >/dev/null || need+=(procps)
    command -v python3 >/dev/null || need+=(python3)
    if [ ${#need[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${need[*]}; run as root (or install them) first"
        log "== installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    NC=$(command -v nc.openbsd)
}

build_xfer() {
    if [ -n "${XFER_BIN:-}" ]; then
        XFER=$(readlink -f "$XFER_BIN")
    else
        log "== building xfer (cargo build --release --locked)"
        (cd "$REPO" && cargo build --release --locked --quiet)
        XFER="$REPO/target/release/xfer"
    fi
    [ -x "$XFER" ] || die "no xfer binary at $XFER"
}

make_workdir() {
    local parent=${BENCH_DIR:-/tmp}
    mkdir -p "$parent"
    W=$(mktemp -d "$parent/xfer-bench.XXXXXX")
    W=$(readlink -f "$W")
    # socat addresses and the remote side of ssh commands take paths
    # unquoted: keep them to characters that need no quoting anywhere.
    case $W in *[!A-Za-z0-9/._-]*) die "work dir '$W' has characters socat/ssh paths cannot take; set BENCH_DIR" ;; esac
    mkdir -p "$W/src" "$W/srv" "$W/cli" "$W/trash" "$W/run" "$W/manifest" "$W/ssh"
    RUN=$W/run   # logs and GNU time output of the current run
}

make_certs() {
    "$XFER" keygen --dir "$W/certs" >/dev/null
    CERTS=$W/certs
}

# A throwaway sshd identity and client key, all under $W/ssh. sshd itself is
# started per run (start_sshd), so its rusage covers exactly one run.
make_ssh() {
    local d=$W/ssh
    port_listening "$SSH_PORT" && die "port $SSH_PORT is taken; set BENCH_SSH_PORT to a free port"
    ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$d/host_key"
    ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$d/client_key"
    cp "$d/client_key.pub" "$d/authorized_keys"
    # sshd refuses to start without its privilege separation directory.
    mkdir -p /run/sshd && chmod 0755 /run/sshd
    cat > "$d/sshd_config" <<EOF
ListenAddress $HOST:$SSH_PORT
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
# The work dir sits under /tmp (mode 1777), which StrictModes would refuse.
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
PrintMotd no
X11Forwarding no
LogLevel ERROR
EOF
    echo "[$HOST]:$SSH_PORT $(cut -d' ' -f1,2 "$d/host_key.pub")" > "$d/known_hosts"
    # One client config used by ssh, scp and rsync: no ~/.ssh, no agent.
    cat > "$d/config" <<EOF
Host bench
  HostName $HOST
  Port $SSH_PORT
  User $(id -un)
  IdentityFile $d/client_key
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile $d/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
EOF
    SSHCFG=$d/config
    /usr/sbin/sshd -t -f "$d/sshd_config" || die "sshd rejects its config"
}

# random_stream: endless incompressible bytes, far faster than /dev/urandom
# here (AES-128-CTR keystream under a random key).
random_stream() {
    openssl enc -aes-128-ctr -nosalt -iv 0 \
        -K "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" < /dev/zero 2>/dev/null
}

# make_tree DIR COUNT SIZE FOLDERS: COUNT random files of SIZE bytes spread
# over FOLDERS sub-folders (one process for all of them).
make_tree() {
    python3 -c '
import os, sys
root, count, size, folders = sys.argv[1], *map(int, sys.argv[2:5])
src = sys.stdin.buffer
for f in range(folders):
    os.makedirs(os.path.join(root, "d%03d" % f), exist_ok=True)
for i in range(count):
    with open(os.path.join(root, "d%03d" % (i % folders), "f%05d.bin" % i), "wb") as out:
        out.write(src.read(size))
' "$1" "$2" "$3" "$4" < <(random_stream)
}

make_file() { head -c "$2" < <(random_stream) > "$1"; }

make_sources() {
    log "== generating source data in $W/src"
    if wants big; then make_file "$W/src/big.bin" $((BIG_MIB << 20)); fi
    if wants small; then make_tree "$W/src/small4k" "$SMALL_N" 4096 "$SMALL_DIRS"; fi
    if wants medium; then make_tree "$W/src/medium1m" "$MEDIUM_N" $((1 << 20)) "$MEDIUM_DIRS"; fi
    if wants single; then make_file "$W/src/one1k.bin" 1024; fi
    if wants latency; then make_tree "$W/src/tiny1k" "$TINY_N" 1024 1; fi
    if wants concurrency; then make_tree "$W/src/conc" "$CONC_N" $((CONC_MIB << 20)) 1; fi
    flush_disk
}

# manifest PATH: sorted "blake3  relative/path" lines for a file or a tree,
# ignoring xfer's staging area.
manifest() {
    if [ -d "$1" ]; then
        (cd "$1" && find . -path ./.xfer -prune -o -type f -print0 | LC_ALL=C sort -z |
            xargs -0 -r "$XFER" hash) | sed 's#  \./#  #'
    elif [ -f "$1" ]; then
        printf '%s  %s\n' "$("$XFER" hash "$1" | cut -d' ' -f1)" "$(basename "$1")"
    fi
}

# --------------------------------------------------------------- servers ---
# start_server READY CMD...: start CMD under GNU time in its own process
# group, with SERVER_IN/SERVER_OUT as stdin/stdout, and wait (bounded) until
# it is ready: READY is "xfer" (read the port from its "listening on" line
# into PORT) or "port" (PORT is given; wait until it listens).

start_server() {
    local ready=$1 deadline=$((SECONDS + 15))
    shift
    SERVER_CMD=("$@")
    rm -f "$RUN/server.time"
    setsid /usr/bin/time -f "$TIME_FMT" -o "$RUN/server.time" "$@" \
        < "${SERVER_IN:-/dev/null}" > "${SERVER_OUT:-$RUN/server.out}" 2> "$RUN/server.err" &
    SERVER_GROUP=$!
    GROUPS_LIVE[$SERVER_GROUP]=1
    SERVER_PID=""
    while :; do
        [ -n "$SERVER_PID" ] || SERVER_PID=$(pgrep -P "$SERVER_GROUP" | head -n 1 || true)
        if [ -n "$SERVER_PID" ]; then
            if [ "$ready" = xfer ]; then
                PORT=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$RUN/server.err" | head -n 1)
                [ -n "$PORT" ] && return 0
            elif port_listening "$PORT"; then
                return 0
            fi
        fi
        if ! alive "$SERVER_GROUP" || [ "$SECONDS" -ge "$deadline" ]; then
            log "   server did not start: ${SERVER_CMD[*]}"
            sed 's/^/   | /' "$RUN/server.err" >&2
            stop_server term
            return 1
        fi
        sleep 0.01
    done
}

# stop_server MODE: "self" (it exits once its one connection is done),
# "term" (SIGTERM now; xfer serve drains and exits 0), "sshd" (wait until the
# session processes are gone, so GNU time counts them, then SIGTERM).
stop_server() {
    local pid=${SERVER_PID:-}
    case $1 in
        self) wait_gone "$SERVER_GROUP" 60 || log "   server still running after 60 s: stopping it" ;;
        sshd)
            local deadline=$((SECONDS + 30))
            while [ -n "$pid" ] && pgrep -P "$pid" >/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
                sleep 0.02
            done ;;
    esac
    if alive "$SERVER_GROUP"; then
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
        wait_gone "$SERVER_GROUP" 30 || kill -KILL -- "-$SERVER_GROUP" 2>/dev/null || true
    fi
    reap "$SERVER_GROUP"
    # xfer serve must exit 0 on SIGTERM (GNU time reports either way).
    if [ "$REAPED" != 0 ] && [ "${SERVER_CMD[0]}" = "$XFER" ]; then
        log "   note: xfer serve exited with status $REAPED"
    fi
}

start_sshd() { PORT=$SSH_PORT; start_server port /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config"; }

# start_proxy TARGET_PORT: the delay proxy in front of a server; sets PORT to
# the proxy's port.
start_proxy() {
    local deadline=$((SECONDS + 15))
    setsid python3 "$PROXY_PY" 0 "$HOST:$1" --delay-ms "$DELAY_MS" \
        < /dev/null > /dev/null 2> "$RUN/proxy.err" &
    PROXY_GROUP=$!
    GROUPS_LIVE[$PROXY_GROUP]=1
    PORT=""
    while [ -z "$PORT" ]; do
        PORT=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\) .*/\1/p' "$RUN/proxy.err" | head -n 1)
        if [ -z "$PORT" ]; then
            if ! alive "$PROXY_GROUP" || [ "$SECONDS" -ge "$deadline" ]; then
                cat "$RUN/proxy.err" >&2
                return 1
            fi
            sleep 0.01
        fi
    done
}

stop_proxy() {
    kill -TERM "$PROXY_GROUP" 2>/dev/null || true
    wait_gone "$PROXY_GROUP" 10 || kill -KILL -- "-$PROXY_GROUP" 2>/dev/null || true
    reap "$PROXY_GROUP"
}

# ------------------------------------------------------------------ tools ---
# Each tool has tool_<name> DIR SRC DST, which starts the server for one run
# (or fails) and sets CLIENT_CMD (plus CLIENT_IN/CLIENT_OUT), STOP (how to
# stop the server) and RESULT (where the copy lands). DIR is push (client's
# SRC to the server's DST) or pull (server's SRC to the client's DST). SRC is
# a file or a folder under $W/src; DST is an existing, empty folder.

SOCAT_TLS=""
socat_tls_opts() {
    SOCAT_TLS="cafile=$CERTS/ca.pem,verify=1"
    # TLS 1.3 only, like xfer, when this socat knows the option.
    if socat -hhh 2>/dev/null | grep -q openssl-min-proto-version; then
        SOCAT_TLS+=",openssl-min-proto-version=TLS1.3"
    fi
}

tool_xfer() {
    local dir=$1 src=$2 dst=$3 name
    name=$(basename "$src")
    STOP=term RESULT=$dst/$name
    if [ "$dir" = push ]; then
        start_server xfer "$XFER" serve -q --listen "$HOST:0" --root "$dst" --certs "$CERTS" || return 1
        [ -z "${VIA_PROXY:-}" ] || start_proxy "$PORT" || return 1
        CLIENT_CMD=("$XFER" push -q "$HOST:$PORT" "$src" --certs "$CERTS")
    else
        start_server xfer "$XFER" serve -q --read-only --listen "$HOST:0" --root "$(dirname "$src")" \
            --certs "$CERTS" || return 1
        [ -z "${VIA_PROXY:-}" ] || start_proxy "$PORT" || return 1
        CLIENT_CMD=("$XFER" pull -q "$HOST:$PORT" "$name" --out "$dst" --certs "$CERTS")
    fi
}

tool_socat() {
    local dir=$1 src=$2 dst=$3 name tls
    name=$(basename "$src")
    STOP=self RESULT=$dst/$name PORT=$(free_port)
    tls=$SOCAT_TLS
    local listen="OPENSSL-LISTEN:$PORT,bind=$HOST,reuseaddr,cert=$CERTS/server.pem,key=$CERTS/server.key,$tls"
    local connect="OPENSSL:$HOST:$PORT,cert=$CERTS/client.pem,key=$CERTS/client.key,$tls"
    if [ "$dir" = push ]; then
        start_server port socat -u "$listen" "CREATE:$dst/$name" || return 1
        CLIENT_CMD=(socat -u "OPEN:$src" "$connect")
    else
        start_server port socat -u "OPEN:$src" "$listen" || return 1
        CLIENT_CMD=(socat -u "$connect" "CREATE:$dst/$name")
    fi
}

tool_nc() {
    local dir=$1 src=$2 dst=$3 name
    name=$(basename "$src")
    STOP=self RESULT=$dst/$name PORT=$(free_port)
    if [ "$dir" = push ]; then
        # The receiver writes the socket into the file until the sender's
        # EOF (-N: the sender shuts its side down after the last byte).
        SERVER_OUT=$dst/$name
        start_server port "$NC" -l "$HOST" "$PORT" || return 1
        CLIENT_CMD=("$NC" -N "$HOST" "$PORT")
        CLIENT_IN=$src
    else
        SERVER_IN=$src
        start_server port "$NC" -N -l "$HOST" "$PORT" || return 1
        CLIENT_CMD=("$NC" "$HOST" "$PORT")
        CLIENT_OUT=$dst/$name
    fi
}

# scp, scp_gcm, rsync and tarssh talk to a per-run sshd. scp is OpenSSH's
# default mode (the SFTP protocol since OpenSSH 9.0).
ssh_copy() {
    local dir=$1 src=$2 dst=$3
    shift 3
    STOP=sshd RESULT=$dst/$(basename "$src")
    start_sshd || return 1
    if [ "$dir" = push ]; then
        CLIENT_CMD=("$@" "$src" "bench:$dst/")
    else
        CLIENT_CMD=("$@" "bench:$src" "$dst/")
    fi
}

tool_scp() {
    local r=()
    [ -d "$2" ] && r=(-r)
    ssh_copy "$1" "$2" "$3" scp -q "${r[@]}" -F "$SSHCFG"
}
tool_scp_gcm() { ssh_copy "$1" "$2" "$3" scp -q -F "$SSHCFG" -c aes128-gcm@openssh.com; }
tool_rsync() { ssh_copy "$1" "$2" "$3" rsync -a -e "ssh -F $SSHCFG"; }

tool_tarssh() {
    local dir=$1 src=$2 dst=$3 parent name
    parent=$(dirname "$src") name=$(basename "$src")
    STOP=sshd RESULT=$dst/$name
    start_sshd || return 1
    if [ "$dir" = push ]; then
        CLIENT_CMD=(bash -c "set -o pipefail; tar -C $parent -cf - $name | ssh -F $SSHCFG bench 'tar -C $dst -xf -'")
    else
        CLIENT_CMD=(bash -c "set -o pipefail; ssh -F $SSHCFG bench 'tar -C $parent -cf - $name' | tar -C $dst -xf -")
    fi
}

declare -A LABEL=(
    [xfer]="xfer" [xferdelay]="xfer, ${DELAY_MS} ms proxy" [socat]="socat TLS 1.3 mTLS"
    [scp_gcm]="scp -c aes128-gcm" [scp]="scp (default cipher)" [rsync]="rsync -a over ssh"
    [nc]="nc (plain TCP)" [tarssh]="tar | ssh tar x"
)

# ------------------------------------------------------------ one run ---

# cmd_text: the command line of an array, for the report: the xfer binary
# shown as `xfer`, the work dir as $W and this run's port as $PORT, so it
# reads as a recipe.
cmd_text() {
    if [ "$1" = bash ] && [ "$2" = -c ]; then
        # A pipeline: show it as one would type it.
        local p=${3#set -o pipefail; }
        printf '%s' "${p//$W/\$W}"
        return
    fi
    local a out="" plain='^[A-Za-z0-9_./:=,@%+$-]+$'
    for a in "$@"; do
        [ "$a" = "$XFER" ] && a=xfer
        a=${a//$W/\$W}
        if [ -n "${PORT:-}" ] && [ "$PORT" != "$SSH_PORT" ]; then
            [ "$a" = "$PORT" ] && a="\$PORT"
            a=${a//:$PORT,/:\$PORT,}
            [ "${a%:"$PORT"}" != "$a" ] && a="${a%:"$PORT"}:\$PORT"
        fi
        # Arguments with spaces or other specials are double-quoted, so
        # that $W still expands when the line is pasted into a shell.
        if [[ $a =~ $plain ]]; then out+=" $a"; else out+=" \"$a\""; fi
    done
    printf '%s' "${out# }"
}

# measure SCENARIO TOOL DIR RUN LIMIT: one timed run, checked and recorded.
measure() {
    local scen=$1 tool=$2 dir=$3 run=$4 limit=$5 src=$6
    local side=srv
    [ "$dir" = pull ] && side=cli
    local dst=$W/$side/$scen-$tool-$dir-$run
    mkdir -p "$dst"
    rm -f "$RUN"/*
    local fn=tool_$tool via=""
    [ "$tool" = xferdelay ] && fn=tool_xfer via=1
    CLIENT_IN=/dev/null CLIENT_OUT=$RUN/client.out SERVER_IN="" SERVER_OUT="" RESULT=""
    local status=0 why="" wall=""
    if ! VIA_PROXY=$via $fn "$dir" "$src" "$dst"; then
        status=1 why="server did not start"
    else
        # Untimed: flush earlier runs' dirty pages (see the header).
        flush_disk
        local t0 t1
        t0=$EPOCHREALTIME
        timeout -k 5 "$limit" /usr/bin/time -f "$TIME_FMT" -o "$RUN/client.time" "${CLIENT_CMD[@]}" \
            < "$CLIENT_IN" > "$CLIENT_OUT" 2> "$RUN/client.err" &
        local cpid=$!
        GROUPS_LIVE[$cpid]=1
        reap "$cpid"
        t1=$EPOCHREALTIME
        status=$REAPED
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
        [ -n "$via" ] && stop_proxy
        stop_server "$STOP"
        if [ "$status" = 124 ]; then why="timed out after ${limit}s"
        elif [ "$status" != 0 ]; then why="client exit $status"
        else
            manifest "$RESULT" > "$RUN/result.manifest"
            if ! cmp -s "$W/manifest/$scen" "$RUN/result.manifest"; then
                status=1 why="files differ from the source (BLAKE3); first differences:"
                diff "$W/manifest/$scen" "$RUN/result.manifest" | grep '^[<>]' | head -n 4 > "$RUN/diff.txt" || true
            fi
        fi
    fi
    local c s
    c=$(grep '^TIME' "$RUN/client.time" 2>/dev/null | cut -d' ' -f3-) || true
    s=$(grep '^TIME' "$RUN/server.time" 2>/dev/null | cut -d' ' -f3-) || true
    [ -n "$c" ] || c="0 0 0"
    [ -n "$s" ] || s="0 0 0"
    local ok=ok
    if [ "$status" != 0 ]; then
        ok=FAIL
        log "   FAILED: $scen ${LABEL[$tool]} $dir run $run: $why"
        local f
        for f in diff.txt client.err server.err; do
            [ -s "$RUN/$f" ] || continue
            [ "$f" = diff.txt ] || echo "   | ${f%.err} stderr:" >&2
            tail -n 5 "$RUN/$f" | sed 's/^/   |   /' >&2
        done
        wall=${wall:-0}
    else
        log "   $scen ${LABEL[$tool]} $dir run $run: ${wall}s"
    fi
    # shellcheck disable=SC2086  # c and s are three numbers each
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$tool" "$dir" "$run" "$ok" "$wall" \
        $c $s >> "$W/results.tsv"
    # The first run of each tool writes down its command lines for the report.
    if ! grep -q "^$scen	$tool	$dir	" "$W/commands.tsv" 2>/dev/null && [ -n "${CLIENT_CMD[*]:-}" ]; then
        local sv cl
        sv=$(cmd_text "${SERVER_CMD[@]}")
        [ -n "$SERVER_IN" ] && sv+=" < ${SERVER_IN//$W/\$W}"
        [ -n "$SERVER_OUT" ] && sv+=" > ${SERVER_OUT//$W/\$W}"
        cl=$(cmd_text "${CLIENT_CMD[@]}")
        [ "$CLIENT_IN" != /dev/null ] && cl+=" < ${CLIENT_IN//$W/\$W}"
        [ "$CLIENT_OUT" != "$RUN/client.out" ] && cl+=" > ${CLIENT_OUT//$W/\$W}"
        [ -n "$via" ] && sv+="   # then: scripts/delay_proxy.py 0 $HOST:SERVER_PORT --delay-ms $DELAY_MS, and the client dials the proxy's \$PORT"
        printf '%s\t%s\t%s\t%s\t%s\n' "$scen" "$tool" "$dir" "$sv" "$cl" >> "$W/commands.tsv"
    fi
    CLIENT_CMD=()
    dispose "$dst"
}

# flush_disk: sync, bounded like every other wait here.
flush_disk() { timeout 300 sync || log "   sync did not finish within 300 s"; }

# dispose DST: a run's destination is never reused. Folders of many files go
# to the trash, deleted at exit (see the header); single files are deleted
# now (one inode, and 2 GiB copies add up).
dispose() {
    if [ "$SCEN_FILES" = 1 ]; then
        rm -rf "$1"
    else
        mv "$1" "$W/trash/"
    fi
    # Keep room on the disk: empty the trash early if space runs short.
    local avail need
    avail=$(df -Pk "$W" | awk 'NR == 2 { print $4 }')
    need=$(((SCEN_BYTES / 1024) * 3 + 1048576))
    if [ "$avail" -lt "$need" ]; then
        log "   disk space is short: emptying the trash now"
        rm -rf "$W/trash" && mkdir -p "$W/trash" && flush_disk
    fi
}

# run_scenario NAME LABEL SRC BYTES FILES RUNS LIMIT TOOL:DIR...
# Tools alternate within each round, so every tool sees the same conditions.
run_scenario() {
    local scen=$1 label=$2 src=$3 bytes=$4 files=$5 runs=$6 limit=$7
    shift 7
    log "== $label: $runs runs of: $*"
    manifest "$src" > "$W/manifest/$scen"
    [ -s "$W/manifest/$scen" ] || die "no source manifest for $scen"
    printf '%s\t%s\t%s\t%s\t%s\n' "$scen" "$label" "$bytes" "$files" "$runs" >> "$W/meta.tsv"
    SCEN_BYTES=$bytes SCEN_FILES=$files
    local r spec
    for r in $(seq 1 "$runs"); do
        for spec in "$@"; do
            measure "$scen" "${spec%:*}" "${spec#*:}" "$r" "$limit" "$src"
        done
    done
}

# ---------------------------------------------------------- concurrency ---
# CONC_N xfer clients, each pushing its own file, all at once to one server:
# the server's peak RSS under load, and whether every file arrives intact.
run_concurrency() {
    local label="$CONC_N clients x $CONC_MIB MiB at once" dst=$W/srv/conc-1 i
    log "== $label"
    # Each client pushes one file of $W/src/conc/d000, which lands at the root.
    manifest "$W/src/conc/d000" > "$W/manifest/concurrency"
    mkdir -p "$dst"
    rm -f "$RUN"/*
    if ! start_server xfer "$XFER" serve -q --listen "$HOST:0" --root "$dst" --certs "$CERTS"; then
        printf 'FAIL\t0\t%s\t0 0 0\t0 0 0\tserver did not start\n' "$CONC_N" > "$W/conc.tsv"
        return
    fi
    flush_disk
    local pids=() files=("$W"/src/conc/d000/*.bin) t0 t1 failed=0
    t0=$EPOCHREALTIME
    for i in "${!files[@]}"; do
        timeout -k 5 600 /usr/bin/time -f "$TIME_FMT" -o "$RUN/client$i.time" \
            "$XFER" push -q "$HOST:$PORT" "${files[$i]}" --certs "$CERTS" \
            < /dev/null > /dev/null 2> "$RUN/client$i.err" &
        pids+=($!)
        GROUPS_LIVE[$!]=1
    done
    for i in "${!pids[@]}"; do
        reap "${pids[$i]}"
        if [ "$REAPED" != 0 ]; then
            failed=$((failed + 1))
            log "   client $i exited $REAPED: $(tail -n 1 "$RUN/client$i.err")"
        fi
    done
    t1=$EPOCHREALTIME
    stop_server term
    local why=ok
    if [ "$failed" -gt 0 ]; then why="$failed clients failed"
    elif ! cmp -s "$W/manifest/concurrency" <(manifest "$dst"); then why="files differ from the source (BLAKE3)"
    fi
    # Clients: CPU summed, RSS the largest of them.
    local c s
    c=$(cat "$RUN"/client*.time | awk '/^TIME/ { u += $3; y += $4; if ($5 > m) m = $5 } END { printf "%.2f %.2f %d", u, y, m }')
    s=$(grep '^TIME' "$RUN/server.time" | cut -d' ' -f3-) || s="0 0 0"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$([ "$why" = ok ] && echo ok || echo FAIL)" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "$CONC_N" "$c" "$s" "$why" > "$W/conc.tsv"
    printf 'concurrency\txfer\tpush\t%s\t%s\n' \
        "$(cmd_text "${SERVER_CMD[@]}")" \
        "$(cmd_text "$XFER" push -q "$HOST:\$PORT" "$W/src/conc/d000/f00000.bin" --certs "$CERTS")   # x $CONC_N at once, one file each" \
        >> "$W/commands.tsv"
    log "   $label: $why"
    rm -rf "$dst"
}

# ------------------------------------------------------------ estimate ---
# Rough duration, from runs on the 2-core VM this was written on: wall time
# of the transfers, the untimed sync/check/delete around each run, and the
# source data. Milliseconds, to stay in shell arithmetic.
estimate_minutes() {
    local ms=0 tree_dirs=5
    [ "$PEER_PULLS" = 1 ] && tree_dirs=8
    # big: ~4 ms per MiB per tool and direction (12 of them), 0.5 s around each
    wants big && ms=$((ms + RUNS * 12 * (BIG_MIB * 4 + 500)))
    # 4 KiB files: ~0.6 ms per file per tool and direction, with the delete
    wants small && ms=$((ms + RUNS * tree_dirs * (SMALL_N * 6 / 10 + 300)))
    # 1 MiB files: ~6 ms per file per tool and direction
    wants medium && ms=$((ms + RUNS * tree_dirs * (MEDIUM_N * 6 + 300)))
    wants single && ms=$((ms + SINGLE_RUNS * 2 * 250))
    wants latency && ms=$((ms + RUNS * 4 * (400 + TINY_N * 3 / 10)))
    wants concurrency && ms=$((ms + CONC_N * CONC_MIB * 4 + 1000))
    # source data: ~1.5 ms per MiB to generate
    ms=$((ms + (BIG_MIB + MEDIUM_N + CONC_N * CONC_MIB) * 3 / 2 + 3000))
    echo $(((ms + 59999) / 60000))
}

# ------------------------------------------------------------- the report ---

machine_info() {
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "cores=$(nproc)"
        echo "ram=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "kernel=$(uname -sr)"
        echo "fs=$(df -PT "$W" | awk 'NR == 2 { print $2 " (" $1 ", mounted on " $7 ")" }')"
        echo "xfer=$("$XFER" --version)"
        echo "ssh=$(ssh -V 2>&1)"
        echo "socat=$(socat -V 2>/dev/null | grep -m1 'socat version' || socat -V | head -n 1)"
        echo "rsync=$(rsync --version | head -n 1)"
        echo "tar=$(tar --version | head -n 1)"
        echo "nc=netcat-openbsd $(dpkg-query -W -f '${Version}' netcat-openbsd 2>/dev/null || echo '?')"
        echo "python=$(python3 --version 2>&1)"
        echo "quick=$QUICK"
        echo "runs=$RUNS"
        echo "delay_ms=$DELAY_MS"
        echo "mode=$([ "$QUICK" = 1 ] && echo "--quick" || echo "full")"
        echo "args=${BENCH_ARGS:-}"
        echo "single_runs=$SINGLE_RUNS"
        echo "ssh_port=$SSH_PORT"
        echo "conc_label=$CONC_N xfer clients × $CONC_MIB MiB each, one server"
    } > "$W/info.txt"
}

# The numbers: medians, ranges, throughput, CPU, RSS, and the targets, as
# Markdown. Python (already needed for the proxy) does the arithmetic.
write_report() {
    python3 - "$W" "$1" "$REPO/scripts/bench-profile.md" <<'PY'
import os, statistics, sys

W, out, profile_notes = sys.argv[1], sys.argv[2], sys.argv[3]
info = dict(l.rstrip("\n").split("=", 1) for l in open(f"{W}/info.txt"))
meta = {}
order = []
if os.path.exists(f"{W}/meta.tsv"):
    for l in open(f"{W}/meta.tsv"):
        scen, label, nbytes, files, runs = l.rstrip("\n").split("\t")
        meta[scen] = dict(label=label, bytes=int(nbytes), files=int(files), runs=int(runs))
        order.append(scen)

rows = {}  # (scen, tool, dir) -> list of runs
tool_order = []
if os.path.exists(f"{W}/results.tsv"):
    for l in open(f"{W}/results.tsv"):
        f = l.rstrip("\n").split("\t")
        key = (f[0], f[1], f[2])
        if key not in rows:
            rows[key] = []
            tool_order.append(key)
        rows[key].append(dict(ok=f[4] == "ok", wall=float(f[5]), cu=float(f[6]), cs=float(f[7]),
                              crss=int(f[8]), su=float(f[9]), ss=float(f[10]), srss=int(f[11])))

LABEL = {"xfer": "xfer", "xferdelay": f"xfer via {info['delay_ms']} ms proxy", "socat": "socat TLS 1.3 mTLS",
         "scp_gcm": "scp -c aes128-gcm", "scp": "scp (default cipher)", "rsync": "rsync -a over ssh",
         "nc": "nc (plain TCP)", "tarssh": "tar \\| ssh tar x"}
rtt = 2 * float(info["delay_ms"]) / 1000

def stats(key):
    """Medians over the successful runs of one tool/direction (None if none)."""
    runs = rows.get(key, [])
    good = [r for r in runs if r["ok"]]
    if not good:
        return None
    med = lambda k: statistics.median(r[k] for r in good)
    return dict(n=len(runs), good=len(good), wall=med("wall"), lo=min(r["wall"] for r in good),
                hi=max(r["wall"] for r in good), ccpu=med("cu") + med("cs"), scpu=med("su") + med("ss"),
                cpu=statistics.median(r["cu"] + r["cs"] + r["su"] + r["ss"] for r in good),
                crss=max(r["crss"] for r in good) / 1024, srss=max(r["srss"] for r in good) / 1024)

def rate(scen, tool, st):
    m = meta[scen]
    mb = m["bytes"] / st["wall"] / 1e6
    if scen == "single":
        return f"{st['wall'] * 1000:.0f} ms per command"
    if tool == "xferdelay":
        return f"{m['files'] / st['wall']:.0f} files/s, {st['wall'] / rtt:.1f} round trips"
    if m["files"] > 1:
        return f"{m['files'] / st['wall']:,.0f} files/s ({mb:.0f} MB/s)"
    return f"{mb:.0f} MB/s"

lines = []
P = lines.append
P("| scenario | tool | dir | ok runs | median s | min–max s | throughput | client CPU s | server CPU s | client peak RSS MiB | server peak RSS MiB |")
P("|---|---|---|---|---|---|---|---|---|---|---|")
for key in tool_order:
    scen, tool, d = key
    st = stats(key)
    n = len(rows[key])
    if st is None:
        P(f"| {meta[scen]['label']} | {LABEL[tool]} | {d} | 0/{n} **FAILED** | – | – | – | – | – | – | – |")
        continue
    okr = f"{st['good']}/{n}" + ("" if st["good"] == n else " **(failures)**")
    P(f"| {meta[scen]['label']} | {LABEL[tool]} | {d} | {okr} | {st['wall']:.3f} | {st['lo']:.3f}–{st['hi']:.3f} | "
      f"{rate(scen, tool, st)} | {st['ccpu']:.2f} | {st['scpu']:.2f} | {st['crss']:.1f} | {st['srss']:.1f} |")

conc = None
if os.path.exists(f"{W}/conc.tsv"):
    f = open(f"{W}/conc.tsv").read().rstrip("\n").split("\t")
    cu, cs, crss = f[3].split()
    su, ss, srss = f[4].split()
    conc = dict(ok=f[0] == "ok", wall=float(f[1]), n=int(f[2]), ccpu=float(cu) + float(cs),
                crss=int(crss) / 1024, scpu=float(su) + float(ss), srss=int(srss) / 1024, why=f[5])
    P("")
    P("| concurrency | result | wall s | client CPU s (sum) | server CPU s | largest client RSS MiB | server peak RSS MiB |")
    P("|---|---|---|---|---|---|---|")
    P(f"| {info['conc_label']} | {'all verified' if conc['ok'] else '**' + conc['why'] + '**'} | {conc['wall']:.2f} | "
      f"{conc['ccpu']:.2f} | {conc['scpu']:.2f} | {conc['crss']:.1f} | {conc['srss']:.1f} |")
table = "\n".join(lines)

# ---- targets: ratios of medians from this same run
T = []
def verdict(ok):
    return "met" if ok else "NOT met"

def xfer_clean(key):
    runs = rows.get(key, [])
    return runs and all(r["ok"] for r in runs)

def target(desc, goal, num_key, den_key, fn, cmp, fmt="{:.2f}"):
    a, b = stats(num_key), stats(den_key)
    if num_key not in rows or den_key not in rows:
        T.append(f"- {desc}: not measured (scenario not run)")
        return
    if a is None or b is None or not xfer_clean(num_key):
        T.append(f"- {desc}: **NOT met** (failed runs, see the table)")
        return
    v = fn(a, b)
    T.append(f"- {desc}: {fmt.format(v)} (target {goal}) — **{verdict(cmp(v))}**")

GiB = 1 << 30
for d in ("push", "pull"):
    target(f"one big file {d}, xfer vs socat TLS 1.3 (throughput ratio)", "≥ 1.5×",
           ("big", "xfer", d), ("big", "socat", d), lambda a, b: b["wall"] / a["wall"], lambda v: v >= 1.5)
for d in ("push", "pull"):
    target(f"one big file {d}, xfer vs nc plain TCP (throughput ratio)", "≥ 1.0×",
           ("big", "xfer", d), ("big", "nc", d), lambda a, b: b["wall"] / a["wall"], lambda v: v >= 1.0)
for d in ("push", "pull"):
    if "big" in meta:
        g = meta["big"]["bytes"] / GiB
        target(f"CPU per GiB, both sides, {d}: xfer / scp aes128-gcm", "≤ 0.6",
               ("big", "xfer", d), ("big", "scp_gcm", d),
               lambda a, b: a["cpu"] / b["cpu"], lambda v: v <= 0.6)
        if ("big", "xfer", d) in rows and stats(("big", "xfer", d)) and stats(("big", "scp_gcm", d)):
            T[-1] += (f" [xfer {stats(('big', 'xfer', d))['cpu'] / g:.2f} s/GiB,"
                      f" scp {stats(('big', 'scp_gcm', d))['cpu'] / g:.2f} s/GiB]")
# Pull ratios for the trees only when the peers' pulls were timed (--peer-pulls).
for d in ("push", "pull"):
    if d == "push" or ("small", "rsync", d) in rows:
        target(f"4 KiB files {d}, xfer files/s ÷ rsync files/s", "≥ 1.5",
               ("small", "xfer", d), ("small", "rsync", d), lambda a, b: b["wall"] / a["wall"], lambda v: v >= 1.5)
for d in ("push", "pull"):
    if d == "push" or ("medium", "tarssh", d) in rows:
        target(f"1 MiB files {d}, xfer MB/s ÷ tar|ssh MB/s", "≥ 1.5",
               ("medium", "xfer", d), ("medium", "tarssh", d), lambda a, b: b["wall"] / a["wall"], lambda v: v >= 1.5)
target("1 KiB file as a whole command, xfer wall / scp wall", "≤ 0.5",
       ("single", "xfer", "push"), ("single", "scp", "push"), lambda a, b: a["wall"] / b["wall"], lambda v: v <= 0.5)
for d in ("push", "pull"):
    key = ("latency", "xferdelay", d)
    if key not in rows:
        T.append(f"- 1 KiB files through the proxy, {d}: not measured (scenario not run)")
    elif not xfer_clean(key):
        T.append(f"- 1 KiB files through the proxy, {d}: **NOT met** (failed runs)")
    else:
        v = stats(key)["wall"] / rtt
        T.append(f"- {meta['latency']['files']} × 1 KiB files through the {info['delay_ms']} ms proxy, {d}: "
                 f"{v:.1f} round trips ({stats(key)['wall']:.3f} s; target < 10) — **{verdict(v < 10)}**")
key = ("big", "xfer", "push")
if key in rows and stats(key):
    v = stats(key)["srss"]
    T.append(f"- peak RSS of xfer serve during the big-file push: {v:.1f} MiB (target ≤ 32 MiB) — "
             f"**{verdict(v <= 32 and xfer_clean(key))}**")
else:
    T.append("- peak RSS of xfer serve during the big-file push: not measured")
if conc:
    ok = conc["ok"] and conc["srss"] <= 160
    T.append(f"- {info['conc_label']}: serve peak RSS {conc['srss']:.1f} MiB (target ≤ 160 MiB), "
             f"{'all files verified' if conc['ok'] else conc['why']} — **{verdict(ok)}**")
else:
    T.append("- many clients at once: not measured (scenario not run)")
targets = "\n".join(T)

# What the profiles say about the targets, kept beside this script (the
# figures above are remeasured on every run; the profiles are not).
profiles = ""
if os.path.exists(profile_notes):
    with open(profile_notes) as fh:
        profiles = "\n" + fh.read().strip() + "\n"

quick_note = ""
if info["quick"] == "1":
    quick_note = ("\n> **Quick mode** (`--quick`): smaller sizes and fewer runs than the targets are defined "
                  "for; the ratios are indicative only.\n")

# ---- commands used
cmds = []
seen = set()
if os.path.exists(f"{W}/commands.tsv"):
    cur = None
    for l in open(f"{W}/commands.tsv"):
        scen, tool, d, sv, cl = l.rstrip("\n").split("\t")
        if scen != cur:
            if cur is not None:
                cmds.append("```")
            label = meta[scen]["label"] if scen in meta else info.get("conc_label", scen)
            cmds.append(f"\n{label}:\n\n```sh")
            cur = scen
        cmds.append(f"# {LABEL[tool].replace(chr(92), '')} {d}")
        cmds.append(f"server: {sv}")
        cmds.append(f"client: {cl}")
    if cur is not None:
        cmds.append("```")

md = f"""# Benchmarks

Produced by `scripts/bench.sh{(' ' + info['args']) if info['args'] else ''}` on {info['date']}.
Loopback only (127.0.0.1); every run uses a fresh server process and a fresh
destination, and every destination was checked against its source with
BLAKE3 (`xfer hash`) after the run. A run that failed or whose files
differed is counted as a failure, never as a time.
{quick_note}
## Machine

- CPU: {info['cpu']}, {info['cores']} cores; RAM {info['ram']}
- Kernel: {info['kernel']}
- Work dir filesystem: {info['fs']}

## Tool versions

- {info['xfer']}
- {info['ssh']}
- {info['socat']}
- {info['rsync']}
- {info['tar']}
- {info['nc']}

## Method

- {info['runs']} runs per tool and direction ({info.get('single_runs', '?')} for the 1 KiB whole-command
  case), tools alternating run by run. Times are the client command's wall
  time, from process start to exit (connection, handshake and, for xfer,
  the flush to disk included); the server is started and listening before
  the clock starts, and is a fresh process per run.
- "median s" and throughput come from the median over the successful runs;
  MB = 10^6 bytes. CPU is user + system seconds (median over runs) from GNU
  time, which includes reaped children (ssh under scp/rsync, sshd's session
  processes, `tar`). Peak RSS is the largest over the runs (for a side made
  of several processes, the largest one of them).
- `sync` runs before each timed run, untimed. xfer makes what it receives
  durable (filesystem sync) before reporting success; socat, nc, scp,
  rsync and tar do not, so their times stop with the data in the page cache.
- "pull" means the reverse direction: the file on the server's side copied
  to the client's side. In the 4 KiB and 1 MiB scenarios the other tools
  push and xfer does both (`--peer-pulls` times their pulls too).
  scp runs in OpenSSH's default (SFTP) mode.

## Results

{table}

## Targets

Ratios of medians from this same run.
{quick_note}
{targets}
{profiles}
## Command lines

`$W` is the work dir (`$W/src` holds the sources; `$W/srv/...` and `$W/cli/...`
are the fresh destinations), `$PORT` the server's port for that run; the
`bench` ssh host is 127.0.0.1:{info['ssh_port']} with a throwaway key, configured in
`$W/ssh/config`. Servers run under `/usr/bin/time -f '%e %U %S %M'`.
{chr(10).join(cmds)}
"""
with open(out, "w") as fh:
    fh.write(md)
print(table)
print()
print("Targets (ratios of medians from this run):")
print(quick_note.strip())
print(targets)
PY
}

# --------------------------------------------------------------- main ---

main() {
    BENCH_ARGS=$(printf '%s ' "${ORIG_ARGS[@]}")
    BENCH_ARGS=${BENCH_ARGS% }
    [ "$(id -u)" = 0 ] || log "bench: not root; installing packages and starting sshd may fail"
    ensure_packages
    build_xfer
    make_workdir
    log "== work dir $W; $RUNS runs per tool; estimated duration ~$(estimate_minutes) min"
    make_certs
    socat_tls_opts
    make_ssh
    make_sources
    : > "$W/results.tsv"
    machine_info
    local started=$SECONDS big_label mib_limit
    big_label="one $BIG_MIB MiB file"
    # Every wait is bounded: a run may take up to 60 s plus 10 s per 100 MiB.
    mib_limit=$((60 + BIG_MIB / 10))

    if wants big; then
        run_scenario big "$big_label" "$W/src/big.bin" $((BIG_MIB << 20)) 1 "$RUNS" "$mib_limit" \
            xfer:push socat:push scp_gcm:push scp:push rsync:push nc:push \
            xfer:pull socat:pull scp_gcm:pull scp:pull rsync:pull nc:pull
    fi
    # Trees: the peers push (issue 4 compares pushes); xfer pulls too.
    local trees=(xfer:push rsync:push tarssh:push scp:push xfer:pull)
    [ "$PEER_PULLS" = 1 ] && trees+=(rsync:pull tarssh:pull scp:pull)
    if wants small; then
        run_scenario small "$SMALL_N × 4 KiB in $SMALL_DIRS folders" "$W/src/small4k" $((SMALL_N * 4096)) \
            "$SMALL_N" "$RUNS" 600 "${trees[@]}"
    fi
    if wants medium; then
        run_scenario medium "$MEDIUM_N × 1 MiB in $MEDIUM_DIRS folders" "$W/src/medium1m" $((MEDIUM_N << 20)) \
            "$MEDIUM_N" "$RUNS" 600 "${trees[@]}"
    fi
    if wants single; then
        run_scenario single "one 1 KiB file, whole command" "$W/src/one1k.bin" 1024 1 "$SINGLE_RUNS" 60 \
            xfer:push scp:push
    fi
    if wants latency; then
        run_scenario latency "$TINY_N × 1 KiB, $DELAY_MS ms each way" "$W/src/tiny1k" $((TINY_N * 1024)) \
            "$TINY_N" "$RUNS" 120 \
            xferdelay:push xferdelay:pull xfer:push xfer:pull
    fi
    if wants concurrency; then
        run_concurrency
    fi
    if wants store; then
        log "== store: xfer serve --store vs rclone (scripts/bench-store.sh)"
        local quick=()
        [ "$QUICK" = 1 ] && quick=(--quick)
        XFER_BIN=$XFER BENCH_DIR=$W "$REPO/scripts/bench-store.sh" "${quick[@]}" --runs "$RUNS" > "$W/store.md"
        cat "$W/store.md"
    fi
    log "== done in $((SECONDS - started)) s of measurements"

    local report=$W/BENCHMARKS.md
    write_report "$report"
    [ -s "$W/store.md" ] && cat "$W/store.md" >> "$report"
    if [ "$WRITE" = 1 ]; then
        cp "$report" "$REPO/BENCHMARKS.md"
        log "== wrote $REPO/BENCHMARKS.md"
    fi
}

main
