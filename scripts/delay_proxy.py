#!/usr/bin/env python3
"""A TCP proxy that adds a fixed one-way latency, for scripts/bench.sh.

    scripts/delay_proxy.py LISTEN_PORT TARGET_HOST:PORT --delay-ms 25

Every chunk read from one side is written to the other side DELAY ms after it
arrived, in order. It behaves like a long cable, not like a slow one: chunks
that arrive while earlier ones are still "in flight" travel alongside them, so
throughput is not limited (each direction is a reader task that stamps chunks
with their due time and a writer task that waits until that time), unlike a
sleep per chunk, which would serialize the transfer into one delay per chunk.

A round trip through the proxy therefore costs 2 x DELAY on top of the real
one. EOF is forwarded as a half-close after the same delay, so protocols that
rely on shutdown(SHUT_WR) keep working. The proxy listens on 127.0.0.1 only
(--listen-host to change that), prints "listening on HOST:PORT" on stderr once
it accepts connections (LISTEN_PORT 0 picks a free port), and exits cleanly on
SIGINT or SIGTERM. Standard library only.
"""

import argparse
import asyncio
import signal
import socket
import sys

# Read size: large enough for bulk data, small enough that a chunk is not held
# back waiting for more bytes (a read returns whatever is available).
CHUNK = 256 * 1024
# Most bytes one direction may hold in flight before the reader stops reading
# (TCP back-pressure then slows the sender). 64 MiB covers a 25 ms line at
# well over 2 GB/s, so it never limits a loopback benchmark.
MAX_IN_FLIGHT = 64 * 1024 * 1024


def parse_args(argv):
    p = argparse.ArgumentParser(description="TCP proxy adding a fixed one-way delay")
    p.add_argument("listen_port", type=int, help="port to listen on (0: any free port)")
    p.add_argument("target", help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (default 25)")
    p.add_argument("--listen-host", default="127.0.0.1", help="address to listen on")
    args = p.parse_args(argv)
    host, sep, port = args.target.rpartition(":")
    if not sep or not port.isdigit():
        p.error(f"target must be HOST:PORT, got {args.target!r}")
    args.target_host = host.strip("[]")
    args.target_port = int(port)
    return args


class Line:
    """One direction of a connection: a FIFO of (due time, bytes) items."""

    def __init__(self, delay):
        self.delay = delay
        self.queue = asyncio.Queue()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()

    async def pump_in(self, reader):
        """Read chunks as they come and stamp each with its delivery time."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.room.wait()
                data = await reader.read(CHUNK)
                due = loop.time() + self.delay
                if not data:
                    break
                self.in_flight += len(data)
                if self.in_flight >= MAX_IN_FLIGHT:
                    self.room.clear()
                self.queue.put_nowait((due, data))
        except (ConnectionError, OSError):
            due = loop.time() + self.delay
        # None marks EOF (or a read error): forwarded as a half-close.
        self.queue.put_nowait((due, None))

    async def pump_out(self, writer):
        """Deliver each chunk at its due time; never sleep for a chunk twice."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            self.in_flight -= len(data)
            if self.in_flight < MAX_IN_FLIGHT:
                self.room.set()


def set_nodelay(writer):
    # Nagle's algorithm would add its own delay to small writes.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def handle(client_reader, client_writer, args):
    try:
        server_reader, server_writer = await asyncio.open_connection(
            args.target_host, args.target_port
        )
    except OSError as e:
        print(f"delay_proxy: cannot reach {args.target}: {e}", file=sys.stderr)
        client_writer.close()
        return
    set_nodelay(client_writer)
    set_nodelay(server_writer)
    delay = args.delay_ms / 1000.0
    up, down = Line(delay), Line(delay)
    tasks = [
        asyncio.create_task(up.pump_in(client_reader)),
        asyncio.create_task(up.pump_out(server_writer)),
        asyncio.create_task(down.pump_in(server_reader)),
        asyncio.create_task(down.pump_out(client_writer)),
    ]
    try:
        # Both directions must finish (EOF delivered) before closing; a write
        # error on either side ends the whole connection.
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for w in (client_writer, server_writer):
            w.close()
        for w in (client_writer, server_writer):
            try:
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass


async def main(args):
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args), args.listen_host, args.listen_port
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"delay_proxy: listening on {host}:{port} -> {args.target}, "
          f"{args.delay_ms:g} ms each way", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Not `async with server`: from Python 3.12 its exit waits for every open
    # connection to close, which would delay a stop requested mid-transfer.
    server.close()


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
