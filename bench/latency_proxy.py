"""A TCP relay on loopback that delays every byte by a fixed time each way: a server's distance, emulated.

    python -m bench.latency_proxy --listen 9100 --upstream 127.0.0.1:9023 --delay-ms 10

The machines the benchmarks run on have no netem (`tc qdisc ... netem` is unknown to their kernel),
so distance is added here: each chunk read from one side is written to the other `delay` later, in
order, so a request and its answer take one round trip of 2 × delay more, and a large transfer is
shifted by it without being slowed. It stands for the way to Cloud Storage, whose real latency
(per request, besides the network's) is not measured on these machines; bench.cold_probe and
bench.refresh_probe start it in front of gcp-storage-emulator with `--rtt-ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    last = 0.0  # the time the last chunk was scheduled for: chunks keep their order
    try:
        while chunk := await reader.read(1 << 16):
            last = max(last, loop.time() + delay)
            loop.call_at(last, writer.write, chunk)
        if writer.can_write_eof():
            loop.call_at(max(last, loop.time() + delay), writer.write_eof)
    except (ConnectionError, OSError):
        writer.close()


async def _relay(upstream: tuple[str, int], delay: float, client_reader: asyncio.StreamReader,
                 client_writer: asyncio.StreamWriter) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(_pipe(client_reader, server_writer, delay), _pipe(server_reader, client_writer, delay))
    await asyncio.sleep(delay)  # the last chunks' writes are scheduled, not yet made
    for writer in (client_writer, server_writer):
        writer.close()


async def _serve(port: int, upstream: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: _relay(upstream, delay, r, w), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="loopback port to accept on")
    parser.add_argument("--upstream", required=True, help="host:port to relay to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added to each direction")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_serve(args.listen, (host, int(port)), args.delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
