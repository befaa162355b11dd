"""The S3 side of a benchmark: the server (a local SeaweedFS started for the run, or one given), a boto3
client for setup and checks, and the latency proxy (bench/latency_proxy.py) put between clients and server."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

from .common import MiB, OUT, ROOT, sh, wait_until

SEAWEED = os.path.join(ROOT, "scripts", "seaweed.py")


class S3:
    """The server and a boto3 client for setup and checks.

    `args` needs `endpoint_url` (None: start SeaweedFS under bench/out/seaweed-suite with bucket "bench") and
    `bucket`; a given endpoint takes its credentials and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and AWS_REGION. `endpoint` is what clients use (the proxy's address in the latency pass),
    `direct_endpoint` the server itself.
    """

    def __init__(self, args):
        import boto3
        from botocore.config import Config
        self.proc_dir = None
        if args.endpoint_url:
            self.endpoint = args.endpoint_url
            self.access = os.environ.get("AWS_ACCESS_KEY_ID", "")
            self.secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            self.region = os.environ.get("AWS_REGION", "us-east-1")
            self.bucket = args.bucket
        else:
            self.proc_dir = os.path.join(OUT, "seaweed-suite")
            shutil.rmtree(self.proc_dir, ignore_errors=True)
            info = json.loads(sh([sys.executable, SEAWEED, "start", "--dir", self.proc_dir, "--bucket", "bench",
                                  "--json"]).stdout)
            self.endpoint, self.access, self.secret = info["endpoint"], info["access_key"], info["secret_key"]
            self.region, self.bucket = "us-east-1", "bench"
        self.direct_endpoint = self.endpoint
        self.boto3, self.Config = boto3, Config
        self.client = self.make_client()

    def make_client(self, max_pool=32):
        """A new boto3 S3 client on `endpoint` (path-style, 5 attempts)."""
        return self.boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access,
                                 aws_secret_access_key=self.secret, region_name=self.region,
                                 config=self.Config(s3={"addressing_style": "path"}, max_pool_connections=max_pool,
                                                    retries={"max_attempts": 5}))

    def env(self):
        """This process's environment with the AWS variables pointing at `endpoint` (for ckptfs, s5cmd)."""
        return dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID=self.access,
                    AWS_SECRET_ACCESS_KEY=self.secret, AWS_REGION=self.region)

    def sha(self, key):
        """sha256 hex digest of an object's body."""
        h = hashlib.sha256()
        for b in self.make_client().get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(4 * MiB):
            h.update(b)
        return h.hexdigest()

    def keys(self, prefix):
        """Every key under `prefix`, listed page by page."""
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def delete_prefix(self, prefix):
        keys = self.keys(prefix)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def s5cmd(self, *args, timeout=None):
        """Runs `s5cmd --endpoint-url ENDPOINT ARGS...` with this server's credentials; raises on failure."""
        return sh(["s5cmd", "--endpoint-url", self.endpoint, *args], env=self.env(), timeout=timeout)

    def stop(self):
        """Stops the server if this run started it."""
        if self.proc_dir:
            sh([sys.executable, SEAWEED, "stop", "--dir", self.proc_dir], check=False)


class Proxy:
    """bench/latency_proxy.py in front of `s3.direct_endpoint`, adding `delay_ms` each way; `endpoint` is its
    loopback address. Its log goes to bench/out/proxy.log."""

    def __init__(self, s3, delay_ms):
        host = s3.direct_endpoint.split("://", 1)[1].rstrip("/")
        pf = os.path.join(OUT, "proxy.port")
        if os.path.exists(pf):
            os.unlink(pf)
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "latency_proxy.py"), "--target", host,
                                      "--delay-ms", str(delay_ms), "--port-file", pf],
                                     stderr=open(os.path.join(OUT, "proxy.log"), "w"))
        if not wait_until(lambda: os.path.exists(pf) and open(pf).read().strip(), 10):
            raise SystemExit("bench: the latency proxy did not start")
        self.endpoint = "http://127.0.0.1:" + open(pf).read().strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def start_seaweed(out, bucket, tool, extra=()):
    """For the standalone scripts: starts SeaweedFS under OUT/seaweed with BUCKET (and `extra` options of
    `scripts/seaweed.py start`); returns (the server's info from scripts/seaweed.py: endpoint, access_key,
    secret_key, pid; an environment for AWS clients)."""
    r = subprocess.run([sys.executable, SEAWEED, "start", "--dir", os.path.join(out, "seaweed"), "--bucket", bucket,
                        "--json", *extra], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{tool}: could not start SeaweedFS: {r.stderr}")
    info = json.loads(r.stdout)
    env = dict(os.environ, AWS_ENDPOINT_URL=info["endpoint"], AWS_ACCESS_KEY_ID=info["access_key"],
               AWS_SECRET_ACCESS_KEY=info["secret_key"], AWS_REGION="us-east-1")
    return info, env


def stop_seaweed(out):
    subprocess.run([sys.executable, SEAWEED, "stop", "--dir", os.path.join(out, "seaweed")], capture_output=True)
