#!/usr/bin/env python3
"""A loopback proxy in front of a real S3 server that holds requests and kills a process at exact points of
the S3 conversation, for crash and write-back tests of real mounts (the daemon needs no test hooks).

    s3_fault_proxy.py --target 127.0.0.1:8333

Prints "PORT CONTROL_PORT" on its first line, then serves until its standard input closes. Clients use
http://127.0.0.1:PORT as their S3 endpoint (path style). Every byte is forwarded unchanged in both
directions, so SigV4-signed requests stay valid: the client signed the Host header it sent (the proxy's
address), and that is what the server checks. HTTP/1.1 is parsed only to find where each request and
response ends and which S3 operation it is (from the method, the query and x-amz-copy-source).

State, set over the control port (JSON; `FaultProxy` below is the client the tests use):
  POST /hold     {"ops": [...]}   requests of these operations are not forwarded until /release; the
                                  request stays open, so the client sees an upload in flight
  POST /release  {"ops": [...]}   forwards what is held (for clients still connected) and holds no more; with
                                  "ops", only the held requests of those operations, which are held no more
  POST /hold-answers {"ops": [...]}  answers of these operations are received whole from the server and
                                  kept from the client until /release-answers: the client reads, late, what
                                  S3 answered before the changes made meanwhile
  POST /release-answers           relays the answers kept and keeps no more
  POST /outage   {"mode": "503" | "reset" | "blackhole"}   S3 is unreachable from now on: no request (on new
                                  or open connections) is forwarded until /restore; each is answered
                                  503 ServiceUnavailable (S3's XML error, then the connection closes), or its
                                  connection is closed without an answer (reset), or it is never answered
                                  (blackhole: the connection stays open and silent, also after /restore, as
                                  a request lost in a network partition; only the client's timeout ends it)
  POST /restore                   forwards again (requests arriving from now on)
  POST /kill     {"pid": P, "ops": [...], "at": "request" | "response", "nth": N}
                 at=request:  when the Nth request of `ops` (counted from now) arrives, SIGKILL P; that
                              request is not forwarded
                 at=response: when the Nth successful (2xx) response of `ops` (counted from now) has been
                              received from the server, SIGKILL P; that response is not relayed
  GET  /stats    {"requests": {op: n}, "responses": {op: [status, ...]}, "held": n, "heldAnswers": n, "heldTotal": n,
                  "dropped": n, "kills": [{"pid", "op", "at", "nth", "status"}], "armed": n,
                  "outage": mode or null, "refused": {op: n}}   (`requests` counts every request that arrived,
                  `refused` those the outage kept from the server)
  POST /wait     {"held": n, "heldAnswers": n, "kills": n, "requests": {op: n}, "refused": {op: n},
                  "timeout": s}   answers (the stats and "satisfied") as soon as at least that many requests
                 (answers) are held, kills done, requests seen, requests refused by an outage,
                 or after `timeout` seconds
A held request whose client goes away is dropped, never forwarded later. Listens on 127.0.0.1 only.
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from urllib.parse import parse_qsl

# Operations that change the bucket, and those an upload of a file consists of.
UPLOADS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
WRITES = UPLOADS + ("CopyObject", "UploadPartCopy", "AbortMultipartUpload", "DeleteObject", "DeleteObjects")


def operation(method, target, headers):
    """The S3 operation of a path-style request."""
    path, _, query = target.partition("?")
    q = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    parts = path.lstrip("/").split("/", 1)
    has_key = len(parts) == 2 and parts[1] != ""
    copy = "x-amz-copy-source" in headers
    if method == "GET":
        if has_key:
            return "ListParts" if "uploadId" in q else "GetObject"
        if "uploads" in q:
            return "ListMultipartUploads"
        if "versions" in q:
            return "ListObjectVersions"
        return "ListObjectsV2" if q.issuperset({"list-type"}) else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "PUT":
        if not has_key:
            return "PutBucketVersioning" if "versioning" in q else "CreateBucket"
        if "partNumber" in q:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "PostObject"
    if method == "DELETE":
        if not has_key:
            return "DeleteBucket"
        return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
    return method


def parse_head(head):
    """(first line parts, lower-cased header dict) of an HTTP head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0].split(" ", 2), headers


async def copy_body(reader, headers, sink, until_close=False):
    """Passes one message body from `reader` to `sink` (an async callable taking bytes) chunk by chunk,
    byte for byte: by Content-Length, by chunked framing, or (responses only) until the connection closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            await sink(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    t = await reader.readuntil(b"\r\n")
                    await sink(t)
                    if t == b"\r\n":
                        return
            left = size + 2  # the data and its CRLF
            while left:
                data = await reader.read(min(left, 1 << 20))
                if not data:
                    raise ConnectionError("body cut short")
                left -= len(data)
                await sink(data)
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise ConnectionError("body cut short")
            left -= len(data)
            await sink(data)
    elif until_close:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            await sink(data)


class Proxy:
    def __init__(self, target):
        self.target = target
        self.hold_ops = set()
        self.released = asyncio.Event()
        self.released_ops = {}
        self.rules = []
        self.requests = {}
        self.responses = {}
        self.held = 0
        self.held_total = 0
        self.hold_answer_ops = set()
        self.answers_released = asyncio.Event()
        self.held_answers = 0
        self.dropped = 0
        self.kills = []
        self.drops = []
        self.flips = []
        self.flipped = []
        self.outage = None  # None, or how requests are refused: "503", "reset", "blackhole"
        self.refused = {}
        self.changed = asyncio.Event()  # set (and replaced) whenever a count changes

    def notify(self):
        self.changed.set()
        self.changed = asyncio.Event()

    def stats(self):
        return {"requests": self.requests, "responses": self.responses, "held": self.held,
                "heldAnswers": self.held_answers,
                "heldTotal": self.held_total, "dropped": self.dropped, "kills": self.kills, "drops": self.drops, "flipped": self.flipped,
                "armed": len(self.rules),
                "outage": self.outage, "refused": self.refused}

    def satisfies(self, want):
        return (self.held >= want.get("held", 0) and self.held_answers >= want.get("heldAnswers", 0)
                and len(self.kills) >= want.get("kills", 0)
                and all(self.requests.get(op, 0) >= n for op, n in want.get("requests", {}).items())
                and all(self.refused.get(op, 0) >= n for op, n in want.get("refused", {}).items()))

    async def wait(self, want):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(want.get("timeout", 30))
        while not self.satisfies(want) and loop.time() < deadline:
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        return dict(self.stats(), satisfied=self.satisfies(want))

    # Rules

    def fire(self, at, op, status=None):
        """Counts a request (or a 2xx response) of `op` against the kill rules; kills and returns True when one
        reaches its count."""
        for rule in list(self.rules):
            if rule["at"] != at or op not in rule["ops"]:
                continue
            rule["seen"] += 1
            if rule["seen"] == rule["nth"]:
                self.rules.remove(rule)
                if rule["pid"] is None:  # a drop: the connection closes, the client never sees the answer
                    self.drops.append({"op": op, "nth": rule["nth"], "status": status})
                    self.notify()
                    return True
                try:
                    os.kill(rule["pid"], signal.SIGKILL)
                except OSError:
                    pass
                self.kills.append({"pid": rule["pid"], "op": op, "at": at, "nth": rule["nth"], "status": status})
                self.notify()
                return True
        return False

    def take_flip(self, op):
        """Whether this request of `op` gets a byte of its body flipped (see /flip); counts it."""
        for rule in list(self.flips):
            if op in rule["ops"]:
                rule["seen"] += 1
                if rule["seen"] == rule["nth"]:
                    self.flips.remove(rule)
                    self.flipped.append(op)
                    self.notify()
                    return True
        return False

    # The proxy

    async def handle(self, creader, cwriter):
        upstream = None
        try:
            while True:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                (method, target, _), headers = parse_head(head)
                op = operation(method, target, headers)
                self.requests[op] = self.requests.get(op, 0) + 1
                self.notify()
                if self.fire("request", op):
                    return
                if self.outage is not None:
                    await self.refuse(op, method, headers, creader, cwriter)
                    return
                early = b""
                if op in self.hold_ops and not self.released.is_set():
                    early = await self.hold(creader, op)
                    if early is None:
                        return
                if upstream is None or upstream[0].at_eof():
                    if upstream is not None:
                        upstream[1].close()
                    upstream = await asyncio.open_connection(*self.target, limit=1 << 20)
                sreader, swriter = upstream

                async def to_server(data):
                    swriter.write(data)
                    await swriter.drain()

                flip = self.take_flip(op) if int(headers.get("content-length", "0")) > len(early) else False

                async def to_server_flipping(data):
                    # The first body byte that passes, flipped once: damage on the way the client cannot see.
                    nonlocal flip
                    if flip and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                        flip = False
                    await to_server(data)

                async def rest_of_body():
                    if "content-length" in headers:
                        left = int(headers["content-length"]) - len(early)
                        await copy_body(creader, {"content-length": str(left)}, to_server_flipping)
                    elif early:
                        raise ConnectionError("a held request with a chunked body")  # no client here sends one
                    else:
                        await copy_body(creader, headers, to_server)

                await to_server(head + early)
                # With Expect: 100-continue (boto3) the client may wait for the server's 100 before the body.
                waits = headers.get("expect", "").lower() == "100-continue"
                if not waits:
                    await rest_of_body()
                while True:
                    rhead = await sreader.readuntil(b"\r\n\r\n")
                    if rhead.split(b" ", 2)[1] != b"100":
                        break
                    cwriter.write(rhead)
                    await cwriter.drain()
                    if waits:
                        await rest_of_body()
                        waits = False
                (_, status, _), rheaders = parse_head(rhead)
                status = int(status)
                self.responses.setdefault(op, []).append(status)
                bodiless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                closes = rheaders.get("connection", "").lower() == "close" or (
                    not bodiless and "content-length" not in rheaders
                    and "chunked" not in rheaders.get("transfer-encoding", "").lower())
                if op in self.hold_answer_ops and not self.answers_released.is_set():
                    # Received whole, and kept until /release-answers.
                    kept = []

                    async def keep_answer(data):
                        kept.append(data)

                    if not bodiless:
                        await copy_body(sreader, rheaders, keep_answer, until_close=True)
                    self.held_answers += 1
                    self.notify()
                    try:
                        await self.answers_released.wait()
                    finally:
                        self.held_answers -= 1
                        self.notify()
                    cwriter.write(rhead + b"".join(kept))
                    await cwriter.drain()
                elif 200 <= status < 300 and any(r["at"] == "response" and op in r["ops"] for r in self.rules):
                    # Received whole, then (perhaps) the kill: the client never sees this answer.
                    buffered = []

                    async def keep(data):
                        buffered.append(data)

                    if not bodiless:
                        await copy_body(sreader, rheaders, keep, until_close=True)
                    if self.fire("response", op, status):
                        return
                    cwriter.write(rhead + b"".join(buffered))
                    await cwriter.drain()
                else:
                    async def to_client(data):
                        cwriter.write(data)
                        await cwriter.drain()

                    await to_client(rhead)
                    if not bodiless:
                        await copy_body(sreader, rheaders, to_client, until_close=True)
                if closes or waits:  # (a body the server did not ask for would be read as the next request)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            for w in (cwriter, upstream[1] if upstream else None):
                if w is not None:
                    try:
                        w.transport.abort()
                    except Exception:
                        pass

    async def refuse(self, op, method, headers, creader, cwriter):
        """Answers a request the way the current outage does (see /outage); the connection then ends."""
        mode = self.outage
        self.refused[op] = self.refused.get(op, 0) + 1
        self.notify()
        if mode == "reset":
            return  # `handle` aborts the connection: the client sees it reset with no answer
        if mode == "blackhole":
            while await creader.read(1 << 20):  # whatever the client sends is swallowed; nothing comes back
                pass
            return
        # "503": the body is read unless the client waits for a 100 Continue (a server answering early
        # never sends one), then S3's error, and the connection closes.
        if headers.get("expect", "").lower() != "100-continue":
            async def discard(_):
                pass
            await copy_body(creader, headers, discard)
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
                b'<Message>The fault proxy is in an outage.</Message></Error>')
        cwriter.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), b"" if method == "HEAD" else body))
        await cwriter.drain()

    def op_released(self, op):
        """The event a /release naming `op` sets."""
        return self.released_ops.setdefault(op, asyncio.Event())

    async def released_for(self, op):
        """Returns at /release, or at one naming `op`."""
        waits = {asyncio.ensure_future(self.released.wait()), asyncio.ensure_future(self.op_released(op).wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()

    async def hold(self, creader, op):
        """Waits for /release (of all, or of `op`), keeping what the client sends meanwhile (the request's body,
        or the part of it that fits in the socket buffers). Returns those bytes, or None if the client went away
        first."""
        early = bytearray()
        self.held += 1
        self.held_total += 1
        self.notify()
        release = asyncio.ensure_future(self.released_for(op))
        try:
            while True:
                read = asyncio.ensure_future(creader.read(1 << 20))
                done, _ = await asyncio.wait({read, release}, return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    try:
                        data = read.result()
                    except ConnectionError:
                        data = b""
                    if not data:
                        self.dropped += 1
                        return None
                    early += data
                    continue
                read.cancel()  # nothing is lost: a read cancelled while it waits has taken no bytes
                return bytes(early)
        finally:
            release.cancel()
            self.held -= 1
            self.notify()

    # Control

    async def control(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            (method, path, _), headers = parse_head(head)
            n = int(headers.get("content-length", "0"))
            args = json.loads(await reader.readexactly(n)) if n else {}
            if path == "/hold":
                self.hold_ops = set(args.get("ops", WRITES))
                if self.released.is_set():
                    self.released = asyncio.Event()
                for op in self.hold_ops:
                    self.released_ops.pop(op, None)
            elif path == "/release" and args.get("ops"):
                for op in args["ops"]:
                    self.op_released(op).set()
                self.hold_ops -= set(args["ops"])
            elif path == "/release":
                self.released.set()
                self.hold_ops = set()
            elif path == "/hold-answers":
                self.hold_answer_ops = set(args["ops"])
                if self.answers_released.is_set():
                    self.answers_released = asyncio.Event()
            elif path == "/release-answers":
                self.answers_released.set()
                self.hold_answer_ops = set()
            elif path == "/outage":
                if args["mode"] not in ("503", "reset", "blackhole"):
                    raise ValueError(f"unknown outage mode {args['mode']!r}")
                self.outage = args["mode"]
            elif path == "/restore":
                self.outage = None
            elif path == "/kill":
                self.rules.append({"pid": int(args["pid"]), "ops": set(args["ops"]), "at": args["at"],
                                   "nth": int(args.get("nth", 1)), "seen": 0})
            elif path == "/flip":
                self.flips.append({"ops": set(args["ops"]), "nth": int(args.get("nth", 1)), "seen": 0})
            elif path == "/drop":
                self.rules.append({"pid": None, "ops": set(args["ops"]), "at": "response",
                                   "nth": int(args.get("nth", 1)), "seen": 0})
            elif path == "/wait":
                pass
            elif path != "/stats":
                raise ValueError(f"unknown control path {path}")
            out = json.dumps(await self.wait(args) if path == "/wait" else self.stats()).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(out), out))
        except Exception as e:  # a bad control request is the test's bug: say so
            msg = str(e).encode()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(msg), msg))
        await writer.drain()
        writer.close()


async def serve(target):
    host, port = target.rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    data = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=1 << 20)
    ctl = await asyncio.start_server(proxy.control, "127.0.0.1", 0)
    print(data.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    async with data, ctl:
        await stdin_closed
    os._exit(0)  # connections still open (held requests) just close


class FaultProxy:
    """The proxy as a child process of the test, and its controls. Stops when closed (or when the test
    process exits: its stdin closes)."""

    def __init__(self, target_endpoint):
        target = target_endpoint.split("://", 1)[-1].rstrip("/")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--target", target],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ports = self.process.stdout.readline().split()
        if len(ports) != 2:
            raise RuntimeError("s3_fault_proxy did not start")
        self.port, self.control_port = int(ports[0]), int(ports[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _call(self, path, args=None, timeout=10):
        import urllib.request
        data = json.dumps(args).encode() if args is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", data=data,
                                     method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def hold(self, ops=WRITES):
        """Requests of `ops` wait in the proxy (the client sees them in flight) until `release`."""
        return self._call("/hold", {"ops": list(ops)})

    def release(self, ops=None):
        """Forwards the held requests (with `ops`, only those of these operations, which are held no more)."""
        return self._call("/release", {"ops": list(ops)} if ops else {})

    def hold_answers(self, ops):
        """Answers of `ops` are received from S3 and kept from the client until `release_answers`: the client
        reads what S3 answered before whatever happens meanwhile."""
        return self._call("/hold-answers", {"ops": list(ops)})

    def release_answers(self):
        return self._call("/release-answers", {})

    def outage(self, mode="503"):
        """S3 is unreachable through the proxy until `restore`: every request is answered 503 ("503"), has its
        connection closed ("reset") or is never answered ("blackhole")."""
        return self._call("/outage", {"mode": mode})

    def restore(self):
        """Ends the outage: requests arriving from now on are forwarded."""
        return self._call("/restore", {})

    def kill_on_request(self, pid, ops, nth=1):
        """SIGKILL `pid` when the `nth` request of `ops` from now arrives; that request never reaches S3."""
        return self._call("/kill", {"pid": pid, "ops": list(ops), "at": "request", "nth": nth})

    def kill_after_response(self, pid, ops, nth=1):
        """SIGKILL `pid` once S3 has answered the `nth` request of `ops` from now with success, before the
        answer is relayed: the change is in S3, and the client never learns it."""
        return self._call("/kill", {"pid": pid, "ops": list(ops), "at": "response", "nth": nth})

    def drop_after_response(self, ops, nth=1):
        """Once S3 has answered the `nth` request of `ops` from now with success, closes the connection instead
        of relaying the answer: the change is in S3, the client sees a reset and sends the request again."""
        return self._call("/drop", {"ops": list(ops), "nth": nth})

    def flip_body_byte(self, ops, nth=1):
        """Flips the first body byte of the `nth` request of `ops` from now on its way to S3 (the request with a
        body; the client never learns)."""
        return self._call("/flip", {"ops": list(ops), "nth": nth})

    def stats(self):
        return self._call("/stats")

    def wait(self, held=0, kills=0, requests=None, timeout=30, held_answers=0, refused=None):
        """Blocks until at least `held` requests and `held_answers` answers are held, `kills` kills done,
        `requests` ({op: n}) seen and `refused` ({op: n}) refused by an outage; True if so, False after
        `timeout` seconds."""
        return self._call("/wait", {"held": held, "heldAnswers": held_answers, "kills": kills,
                                    "requests": requests or {}, "refused": refused or {}, "timeout": timeout},
                          timeout=timeout + 10)["satisfied"]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT of the S3 server")
    asyncio.run(serve(ap.parse_args().target))


if __name__ == "__main__":
    main()
