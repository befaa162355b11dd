#!/usr/bin/env python3
"""A misbehaving S3-like HTTP server on 127.0.0.1 for retry tests.

The first path segment after the bucket picks the fault; the object name carries how many times to
misbehave before answering properly, so each test uses its own counter:
    /bucket/slowdown-N/...   503 SlowDown N times, then 200 with the body
    /bucket/internal-N/...   500 InternalError N times
    /bucket/short-N/...      Content-Length 1000 but 500 bytes and a close, N times
    /bucket/reset-N/...      close the connection without answering, N times
    /bucket/flaky-N/...      N times, alternately 503 SlowDown and 200 with an <Error> body (InternalError), as
                             CompleteMultipartUpload and the copy operations may answer; then the good answer
    /bucket/skewed-N/...     403 RequestTimeTooSkewed with a Date header an hour ahead, N times (to HEAD: no
                             body, so only the status and the Date header tell)
    /bucket/denied/...       403 AccessDenied always (must not be retried)
    /bucket/stall/...        send headers and 10 bytes, then nothing for 30 s
    /echo/...                answer with "LENGTH SHA256" of the request body
The good answer is 1000 bytes: bytes(range(256)) repeated (to a POST ?uploadId=..., a
CompleteMultipartUploadResult document). Prints the port on stdout, then serves
until stdin closes. GET /_count/PATH returns how many requests PATH received.
"""
import collections
import http.server
import re
import socketserver
import sys
import threading

BODY = bytes(i % 256 for i in range(1000))
counts = collections.Counter()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_PUT(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if self.path.startswith("/echo/"):
            import hashlib
            return self.reply(200, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
        self.do_GET()

    do_POST = do_PUT

    skew = 0

    def date_time_string(self, timestamp=None):
        import time
        return super().date_time_string((timestamp or time.time()) + self.skew)

    def do_GET(self):
        self.skew = 0
        path = self.path.split("?")[0]
        if path.startswith("/_count/"):
            body = str(counts[path[len("/_count"):]]).encode()
            return self.reply(200, body)
        with lock:
            counts[path] += 1
            seen = counts[path]
        m = re.match(r"^/[^/]+/(\w+?)(?:-(\d+))?/", path)
        kind, times = (m.group(1), int(m.group(2) or 0)) if m else ("ok", 0)
        if kind == "stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(BODY[:10])
            self.wfile.flush()
            import time
            time.sleep(30)
            return
        if kind == "denied":
            return self.error(403, "AccessDenied", "Access Denied")
        if seen <= times:
            if kind == "skewed":
                self.skew = 3600
                return self.error(403, "RequestTimeTooSkewed",
                                  "The difference between the request time and the current time is too large.")
            if kind == "slowdown":
                return self.error(503, "SlowDown", "Please reduce your request rate.")
            if kind == "internal":
                return self.error(500, "InternalError", "We encountered an internal error.")
            if kind == "short":
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.send_header("ETag", '"e"')
                self.end_headers()
                self.wfile.write(BODY[:500])
                self.wfile.flush()
                self.close_connection = True
                return
            if kind == "reset":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if kind == "flaky":
                if seen % 2:
                    return self.error(503, "SlowDown", "Please reduce your request rate.")
                return self.error(200, "InternalError", "We encountered an internal error.")
        if self.command == "POST" and "uploadId=" in self.path:
            return self.reply(200, b'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
                                   b'<ETag>"e-2"</ETag></CompleteMultipartUploadResult>')
        self.reply(200, BODY)

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"e"')
        self.send_header("x-amz-request-id", "FAULT")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f'<Message>{message}</Message><RequestId>FAULT</RequestId></Error>').encode()
        self.reply(status, body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the test closes our stdin or exits


if __name__ == "__main__":
    main()
