#!/usr/bin/env bash
# The main job, end to end on loopback: build xfer, make a CA and a server
# certificate, invite a second machine, start a server, enroll that machine
# with the one-time code (its key made there), push a sample tree, list it,
# pull it back, check every file byte for byte (and its executable bit),
# remove a file, and stop the server.
# Everything lands in ./demo-out (git-ignored); run it again at will.
set -euo pipefail
cd "$(dirname "$0")/.."

out=demo-out
rm -rf "$out"
mkdir -p "$out"

echo "== building xfer (release)"
cargo build --release --locked --quiet
xfer="$PWD/target/release/xfer"

echo "== xfer keygen: a CA, a server and a client certificate"
"$xfer" keygen --dir "$out/certs"

echo "== xfer keygen --invite runner-7: a one-time code for another machine"
code=$("$xfer" keygen --dir "$out/certs" --invite runner-7)
echo "$code"

echo "== a sample tree: nested folders, an executable, 20 MiB of random bytes, an empty folder, a symlink"
src="$out/src"
mkdir -p "$src/dist/bin" "$src/dist/docs/api" "$src/dist/empty"
printf '#!/bin/sh\necho "hello from xfer"\n' > "$src/dist/bin/run.sh"
chmod 755 "$src/dist/bin/run.sh"
head -c $((20 * 1024 * 1024)) /dev/urandom > "$src/dist/app.bin"
for i in $(seq 1 50); do echo "page $i" > "$src/dist/docs/api/page-$i.txt"; done
: > "$src/dist/docs/EMPTY"
ln -s /etc/hostname "$src/dist/link-to-elsewhere"
echo "build log line" > "$src/build.log"

echo "== xfer serve on 127.0.0.1 (a free port)"
"$xfer" serve --listen 127.0.0.1:0 --root "$out/server-root" --certs "$out/certs" --enroll 2> "$out/serve.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$out/serve.log" | head -n 1)
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "the server did not start:" >&2
    cat "$out/serve.log" >&2
    exit 1
fi
host="127.0.0.1:$port"

echo "== xfer enroll $host CODE: the second machine (its own folder) gets its certificate"
"$xfer" enroll "$host" "$code" --dir "$out/runner-certs"
[ ! -e "$out/certs/runner-7.key" ] || { echo "the key was made on the CA's machine" >&2; exit 1; }
echo "== the same code again is refused (single use)"
if "$xfer" enroll "$host" "$code" --dir "$out/again" 2>&1; then
    echo "a used code was accepted" >&2
    exit 1
fi
id=(--certs "$out/runner-certs" --name runner-7)

echo "== xfer push $host dist/ build.log --to artifacts"
"$xfer" push "$host" "$src/dist/" "$src/build.log" --to artifacts "${id[@]}"

echo "== xfer ls $host artifacts"
"$xfer" ls "$host" artifacts "${id[@]}"

echo "== xfer pull $host artifacts/dist --out pulled"
"$xfer" pull "$host" artifacts/dist --out "$out/pulled" "${id[@]}"

echo "== checking every pulled file against its source"
count=0
while IFS= read -r -d '' f; do
    rel=${f#"$src/dist/"}
    cmp -s "$f" "$out/pulled/dist/$rel" || { echo "MISMATCH: $rel" >&2; exit 1; }
    count=$((count + 1))
done < <(find "$src/dist" -type f -print0)
[ -x "$out/pulled/dist/bin/run.sh" ] || { echo "the executable bit was lost" >&2; exit 1; }
[ -d "$out/pulled/dist/empty" ] || { echo "the empty folder was lost" >&2; exit 1; }
[ ! -e "$out/pulled/dist/link-to-elsewhere" ] || { echo "a symlink was followed" >&2; exit 1; }

echo "== xfer rm $host artifacts/build.log"
"$xfer" rm "$host" artifacts/build.log "${id[@]}"

echo "== stopping the server (SIGTERM)"
kill -TERM "$server"
wait "$server"
trap - EXIT
echo "== the server's log ends with (full log: $out/serve.log)"
tail -n 4 "$out/serve.log"
echo
echo "demo OK: all $count pulled files match their sources byte for byte (BLAKE3-verified in transit)"
