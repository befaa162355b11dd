#!/usr/bin/env python3
"""Loopback stand-in for the AWS endpoints that hand out credentials, plus an S3 that checks them.

One HTTP server on 127.0.0.1 (a free port, printed as the first line of stdout) plays:
  - EC2 instance metadata, IMDSv2 only: PUT /latest/api/token (needs X-aws-ec2-metadata-token-ttl-seconds),
    GET /latest/meta-data/iam/security-credentials/[ROLE] and /latest/meta-data/placement/region (and
    availability-zone/, which botocore reads), each
    needing the session token;
  - the container credentials endpoint: GET /container/credentials, checking Authorization when
    --container-token is given;
  - the AWS SSO portal: GET /federation/credentials?account_id=&role_name= with the access token of
    `aws sso login` in x-amz-sso_bearer_token (--sso-token, --sso-account, --sso-role), answering roleCredentials;
  - STS: POST / with Action=AssumeRole (SigV4 for service "sts" checked with botocore's signer against the
    source credentials) or Action=AssumeRoleWithWebIdentity (unsigned, WebIdentityToken checked), RoleArn
    checked, answering the XML STS answers;
  - S3 (path style): HEAD/GET bucket, PUT/GET object, each request's SigV4 recomputed with botocore's
    S3SigV4Auth and its x-amz-security-token checked against the credentials issued: unknown or wrong
    tokens get 403 InvalidToken, expired or revoked ones 400 ExpiredToken.
With --upstream URL --upstream-key AKID:SECRET the S3 part is a gateway instead: each request whose signature and
session token pass is signed again with the upstream's static keys and sent on to that real S3 server (SeaweedFS
in the mount tests), and its answer passed back; so a mount runs on a real S3 while its temporary credentials
expire and rotate here.
Credentials are deterministic per kind (ASIAIMDS..., ASIAECS..., ASIAWEB..., ASIAROLE...) so botocore and
ckptfs asking separately get the same access key; with --rotate every fetch issues a new generation.
Control: GET /_standin/stats (JSON counters), POST /_standin/expire (revoke every credential issued so
far), POST /_standin/fail and /_standin/recover (credential endpoints answer 500 meanwhile).
Stops when stdin closes or after --max-seconds (no request loop runs forever).
"""
import argparse
import datetime
import hashlib
import json
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

IMDS_TOKEN = "imds-session-token-0123456789"
ROLE_NAME = "standin-role"
AUTH_RE = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.generation = {}
        self.issued = {}  # akid -> (secret, token, expiry epoch)
        self.static = {}
        for pair in args.static:
            ak, sk = pair.split(":", 1)
            self.static[ak] = sk
        self.revoked = set()
        self.failing = False
        self.stats = {"fetches": {}, "s3_ok": 0, "s3_rejected": {}, "akids_used": [], "sts_calls": {}}
        self.objects = {}

    def issue(self, kind):
        with self.lock:
            gen = self.generation.get(kind, 0)
            if gen == 0 or self.args.rotate:
                gen += 1
                self.generation[kind] = gen
            akid = "ASIA%s%06d" % (kind, gen)
            if akid not in self.issued:
                secret = hashlib.sha256(("secret-" + akid).encode()).hexdigest()[:40]
                token = "tok-%s-%s" % (akid, hashlib.sha256(("token-" + akid).encode()).hexdigest()[:24])
                self.issued[akid] = (secret, token, time.time() + self.args.lifetime)
            self.stats["fetches"][kind] = self.stats["fetches"].get(kind, 0) + 1
            secret, token, expiry = self.issued[akid]
            return akid, secret, token, expiry

    def reject(self, code):
        with self.lock:
            self.stats["s3_rejected"][code] = self.stats["s3_rejected"].get(code, 0) + 1


def iso(epoch):
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *a):
        pass

    def send(self, status, body=b"", ctype="application/xml", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def s3_error(self, status, code, message=""):
        self.state.reject(code)
        self.send(status, "<Error><Code>%s</Code><Message>%s</Message></Error>" % (code, message))

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # --- SigV4, recomputed with botocore ---

    def verify(self, body, service):
        """Returns (akid, None) when the request is signed correctly with current credentials, else (None, (status, code))."""
        m = AUTH_RE.match(self.headers.get("Authorization", ""))
        if not m:
            return None, (403, "AccessDenied")
        akid, day, region, svc, signed, signature = m.groups()
        st = self.state
        token = None
        with st.lock:
            if akid in st.static:
                secret = st.static[akid]
            elif akid in st.issued:
                secret, token, expiry = st.issued[akid]
            else:
                return None, (403, "InvalidAccessKeyId")
            revoked = akid in st.revoked
        if svc != service:
            return None, (403, "SignatureDoesNotMatch")
        if token is not None:
            if self.headers.get("x-amz-security-token") != token:
                return None, (403, "InvalidToken")
            if revoked or time.time() > expiry:
                return None, (400, "ExpiredToken")
        names = signed.split(";")
        headers = {k: v for k, v in self.headers.items() if k.lower() in names}
        req = AWSRequest(method=self.command, url="http://%s%s" % (self.headers["Host"], self.path), headers=headers,
                         data=body)
        req.context["timestamp"] = self.headers["X-Amz-Date"]
        cls = S3SigV4Auth if service == "s3" else SigV4Auth
        signer = cls(Credentials(akid, secret, token), service, region)
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        if expected != signature:
            return None, (403, "SignatureDoesNotMatch")
        return akid, None

    # --- routes ---

    def do_PUT(self):
        if self.path == "/latest/api/token":
            self.body()
            if not self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                return self.send(400, "missing ttl", "text/plain")
            return self.send(200, IMDS_TOKEN, "text/plain")
        return self.s3()

    def do_GET(self):
        p = self.path
        if p == "/_standin/stats":
            with self.state.lock:
                return self.send(200, json.dumps(self.state.stats), "application/json")
        if p.startswith("/latest/meta-data/"):
            return self.imds(p[len("/latest/meta-data/"):])
        if p.startswith("/container/"):
            return self.container()
        if p.startswith("/federation/credentials"):
            return self.sso()
        return self.s3()

    def do_HEAD(self):
        return self.s3()

    def do_POST(self):
        p = self.path
        body = self.body()
        st = self.state
        if p == "/_standin/expire":
            with st.lock:
                st.revoked.update(st.issued.keys())
            return self.send(200, "ok", "text/plain")
        if p in ("/_standin/fail", "/_standin/recover"):
            st.failing = p.endswith("fail")
            return self.send(200, "ok", "text/plain")
        if p == "/":
            return self.sts(body)
        if st.args.upstream:
            return self.s3(body)
        return self.send(404, "not found", "text/plain")

    def do_DELETE(self):
        if self.state.args.upstream:
            return self.s3()
        return self.send(404, "not found", "text/plain")

    def imds(self, rest):
        if self.headers.get("x-aws-ec2-metadata-token") != IMDS_TOKEN:
            return self.send(401, "IMDSv2 token required", "text/plain")
        if self.state.failing:
            return self.send(500, "failing", "text/plain")
        if rest == "placement/region":
            return self.send(200, self.state.args.imds_region, "text/plain")
        if rest == "placement/availability-zone/":  # what botocore's IMDSRegionProvider reads
            return self.send(200, self.state.args.imds_region + "a", "text/plain")
        if rest == "iam/security-credentials/":
            return self.send(200, ROLE_NAME, "text/plain")
        if rest == "iam/security-credentials/" + ROLE_NAME:
            akid, secret, token, expiry = self.state.issue("IMDS")
            return self.send(200, json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": akid,
                                              "SecretAccessKey": secret, "Token": token, "Expiration": iso(expiry),
                                              "LastUpdated": iso(time.time())}), "application/json")
        return self.send(404, "not found", "text/plain")

    def container(self):
        want = self.state.args.container_token
        if want and self.headers.get("Authorization") != want:
            return self.send(403, json.dumps({"message": "bad authorization token"}), "application/json")
        if self.state.failing:
            return self.send(500, "failing", "text/plain")
        akid, secret, token, expiry = self.state.issue("ECS")
        return self.send(200, json.dumps({"AccessKeyId": akid, "SecretAccessKey": secret, "Token": token,
                                          "Expiration": iso(expiry), "RoleArn": self.state.args.role_arn}),
                         "application/json")

    def sso(self):
        """GetRoleCredentials of the AWS SSO portal (unsigned; the bearer token is the proof)."""
        st = self.state
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if self.headers.get("x-amz-sso_bearer_token") != st.args.sso_token:
            return self.send(401, json.dumps({"message": "Session token not found or invalid"}), "application/json",
                             [("x-amzn-ErrorType", "UnauthorizedException")])
        if q.get("account_id") != st.args.sso_account or q.get("role_name") != st.args.sso_role:
            return self.send(403, json.dumps({"message": "No access"}), "application/json",
                             [("x-amzn-ErrorType", "ForbiddenException")])
        if st.failing:
            return self.send(500, "failing", "text/plain")
        akid, secret, token, expiry = st.issue("SSO")
        return self.send(200, json.dumps({"roleCredentials": {"accessKeyId": akid, "secretAccessKey": secret,
                                                              "sessionToken": token, "expiration": int(expiry) * 1000}}),
                         "application/json")

    def sts_error(self, status, code, message):
        self.send(status, '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                  "<Code>%s</Code><Message>%s</Message></Error><RequestId>r</RequestId></ErrorResponse>" % (code, message))

    def sts(self, body):
        st = self.state
        q = dict(urllib.parse.parse_qsl(body.decode()))
        action = q.get("Action")
        with st.lock:
            st.stats["sts_calls"][action] = st.stats["sts_calls"].get(action, 0) + 1
        if st.failing:
            return self.sts_error(500, "InternalFailure", "failing")
        if q.get("Version") != "2011-06-15":
            return self.sts_error(400, "InvalidParameterValue", "Version")
        if q.get("RoleArn") != st.args.role_arn:
            return self.sts_error(403, "AccessDenied", "not authorized to assume %s" % q.get("RoleArn"))
        if not q.get("RoleSessionName"):
            return self.sts_error(400, "ValidationError", "RoleSessionName missing")
        if action == "AssumeRoleWithWebIdentity":
            if q.get("WebIdentityToken") != st.args.web_token:
                return self.sts_error(400, "InvalidIdentityToken", "token rejected")
            kind = "WEB"
        elif action == "AssumeRole":
            akid, err = self.verify(body, "sts")
            if err:
                return self.sts_error(err[0], err[1], "source credentials rejected")
            if st.args.external_id and q.get("ExternalId") != st.args.external_id:
                return self.sts_error(403, "AccessDenied", "ExternalId")
            kind = "ROLE"
        else:
            return self.sts_error(400, "InvalidAction", str(action))
        akid, secret, token, expiry = st.issue(kind)
        self.send(200, '<%sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><%sResult><Credentials>'
                  "<AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken>%s</SessionToken>"
                  "<Expiration>%s</Expiration></Credentials><AssumedRoleUser><Arn>%s/s</Arn><AssumedRoleId>AROA:s"
                  "</AssumedRoleId></AssumedRoleUser></%sResult><ResponseMetadata><RequestId>r</RequestId>"
                  "</ResponseMetadata></%sResponse>"
                  % (action, action, akid, secret, token, iso(expiry), st.args.role_arn, action, action))

    def s3(self, body=None):
        body = self.body() if body is None else body
        akid, err = self.verify(body, "s3")
        if err:
            return self.s3_error(err[0], err[1])
        st = self.state
        with st.lock:
            st.stats["s3_ok"] += 1
            if akid not in st.stats["akids_used"]:
                st.stats["akids_used"].append(akid)
        if st.args.upstream:
            return self.forward(body)
        path = urllib.parse.urlsplit(self.path).path
        parts = path.lstrip("/").split("/", 1)
        if len(parts) == 1 or parts[1] == "":
            if self.command == "HEAD":
                return self.send(200)
            with st.lock:
                keys = sorted(k for (b, k) in st.objects if b == parts[0])
            contents = "".join("<Contents><Key>%s</Key><Size>%d</Size><ETag>\"e\"</ETag></Contents>"
                               % (k, len(st.objects[(parts[0], k)])) for k in keys)
            return self.send(200, "<ListBucketResult><Name>%s</Name><KeyCount>%d</KeyCount><IsTruncated>false"
                             "</IsTruncated>%s</ListBucketResult>" % (parts[0], len(keys), contents))
        key = (parts[0], urllib.parse.unquote(parts[1]))
        if self.command == "PUT":
            with st.lock:
                st.objects[key] = body
            return self.send(200, headers=[("ETag", '"%s"' % hashlib.md5(body).hexdigest())])
        with st.lock:
            data = st.objects.get(key)
        if data is None:
            return self.s3_error(404, "NoSuchKey")
        return self.send(200, data, "application/octet-stream", [("ETag", '"%s"' % hashlib.md5(data).hexdigest())])


    # Headers a client's request carries that the gateway signs anew or that belong to this hop only.
    HOP = {"authorization", "x-amz-security-token", "x-amz-date", "x-amz-content-sha256", "host", "connection",
           "expect", "content-length", "transfer-encoding", "keep-alive"}

    def forward(self, body):
        """Sends this (already verified) S3 request to the upstream signed with its static keys; answers with
        the upstream's status, headers and body."""
        import http.client
        st = self.state
        up = urllib.parse.urlsplit(st.args.upstream)
        ak, sk = st.args.upstream_key.split(":", 1)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP}
        req = AWSRequest(method=self.command, url="%s://%s%s" % (up.scheme, up.netloc, self.path), headers=headers,
                         data=body)
        S3SigV4Auth(Credentials(ak, sk), "s3", st.args.upstream_region).add_auth(req)
        out = dict(req.headers.items())
        out["Host"] = up.netloc
        out["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=out)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length"):
                self.send_header(k, v)
        # A HEAD answer carries the object's length without its body.
        self.send_header("Content-Length", resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=6 * 3600, help="seconds credentials are valid")
    ap.add_argument("--rotate", action="store_true", help="every fetch issues new credentials")
    ap.add_argument("--role-arn", default="arn:aws:iam::123456789012:role/standin")
    ap.add_argument("--web-token", default="eyJ.standin.web-identity-token")
    ap.add_argument("--container-token", default="")
    ap.add_argument("--external-id", default="")
    ap.add_argument("--imds-region", default="ap-northeast-3")
    ap.add_argument("--static", action="append", default=[], help="AKID:SECRET a source profile may sign with")
    ap.add_argument("--sso-token", default="sso-access-token-from-aws-sso-login")
    ap.add_argument("--sso-account", default="123456789012")
    ap.add_argument("--sso-role", default="SSOTrainer")
    ap.add_argument("--upstream", default="", help="URL of a real S3 server to send verified S3 requests on to")
    ap.add_argument("--upstream-key", default="", help="AKID:SECRET the upstream accepts")
    ap.add_argument("--upstream-region", default="us-east-1")
    ap.add_argument("--max-seconds", type=float, default=900)
    args = ap.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(timeout=args.max_seconds)
    server.shutdown()

if __name__ == "__main__":
    main()
