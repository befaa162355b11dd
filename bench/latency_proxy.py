#!/usr/bin/env python3
"""A TCP proxy that delays every chunk by a fixed time in each direction (tc netem is not available here).

    latency_proxy.py --listen 127.0.0.1:0 --target 127.0.0.1:8333 --delay-ms 10 [--port-file F]

With 10 ms per direction a request/response pair sees a 20 ms round trip, like S3 from an instance in the
same region. Chunks are delivered in order, each `delay` after it arrived, so a stream keeps its
throughput (the delay is added once, not per chunk in sequence). Listens on loopback only.
"""
import argparse
import asyncio
import time


async def pump(reader, writer, delay):
    """Copies reader to writer, holding each chunk until `delay` after it arrived."""
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            await queue.put((time.monotonic() + delay, data))
            # Back-pressure: do not buffer more than a few MiB per direction.
            while queue.qsize() > 64:
                await asyncio.sleep(0.001)
    except (ConnectionError, OSError):
        pass
    await queue.put((0, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def serve(listen, target, delay, port_file):
    th, tp = target.rsplit(":", 1)

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(th, int(tp))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, sw, delay), pump(sr, cw, delay))
        for w in (cw, sw):
            try:
                w.close()
            except OSError:
                pass

    lh, lp = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, lh, int(lp), limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    if port_file:
        with open(port_file, "w") as f:
            f.write(str(port))
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--delay-ms", type=float, default=10)
    ap.add_argument("--port-file")
    a = ap.parse_args()
    if not a.listen.startswith("127.") and not a.listen.startswith("localhost"):
        raise SystemExit("latency_proxy: listens on loopback only")
    asyncio.run(serve(a.listen, a.target, a.delay_ms / 1000, a.port_file))


if __name__ == "__main__":
    main()
