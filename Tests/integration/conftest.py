"""Fixtures for mount tests: a real SeaweedFS on loopback, the ckptfs binary, boto3, mount helpers, and the
fault proxy (Tests/Harness/s3_fault_proxy.py) that holds requests and kills a daemon at exact points."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
import pytest
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "Tests", "Harness"))
from s3_fault_proxy import UPLOADS, WRITES, FaultProxy  # noqa: E402  (re-exported for the tests)


def ckptfs_bin():
    if os.environ.get("CKPTFS_BIN"):
        return os.environ["CKPTFS_BIN"]
    out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, capture_output=True, text=True, check=True)
    return os.path.join(out.stdout.strip(), "ckptfs")


class Server:
    def __init__(self, info):
        self.info = info
        self.endpoint = info["endpoint"]
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=info["access_key"],
                               aws_secret_access_key=info["secret_key"], region_name="us-east-1",
                               config=Config(s3={"addressing_style": "path"}))

    def env(self, **overrides):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("AWS_") and k != "AWS_CA_BUNDLE":
                del e[k]
        e.update(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID=self.info["access_key"],
                 AWS_SECRET_ACCESS_KEY=self.info["secret_key"], AWS_REGION="us-east-1",
                 AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        e.update(overrides)
        return e

    def metric(self, name, **labels):
        """Sum of a Prometheus counter of the server, filtered by labels."""
        import urllib.request
        text = urllib.request.urlopen(self.info["metrics"]).read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            lab = line[len(name) + 1:line.index("}")]
            pairs = dict(p.split("=", 1) for p in lab.split(",") if "=" in p)
            pairs = {k: v.strip('"') for k, v in pairs.items()}
            if all(pairs.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def settled(self, read, quiet=0.5, timeout=10.0):
        """A server counter once it has stopped moving: SeaweedFS counts a request when it has finished sending,
        which can be just after the client has its answer. Not an event the test can wait on otherwise."""
        end = time.time() + timeout
        last = read()
        while time.time() < end:
            time.sleep(quiet)
            now = read()
            if now == last:
                return now
            last = now
        return last

    def sent_bytes(self, bucket):
        return self.metric("SeaweedFS_s3_bucket_traffic_sent_bytes_total", bucket=bucket)

    def gets(self, bucket):
        """Ranged GETs (206): ckptfs reads data only with ranges. SeaweedFS counts HEAD as type GET too."""
        return self.metric("SeaweedFS_s3_request_total", bucket=bucket, type="GET", code="206")


@pytest.fixture(scope="session")
def server():
    d = tempfile.mkdtemp(prefix="ckptfs-it-")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "start", "--dir", d,
                          "--watch-pid", str(os.getpid()), "--json"], capture_output=True, text=True, check=True)
    srv = Server(json.loads(out.stdout))
    yield srv
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "stop", "--dir", d])
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def proxy(server):
    """A fault proxy in front of the server. A mount given `env=server.env(AWS_ENDPOINT_URL=proxy.endpoint)`
    (what `Mounts.mount_via` does) sends every S3 request through it."""
    p = FaultProxy(server.endpoint)
    yield p
    p.close()


@pytest.fixture
def bucket(server):
    name = "t-" + uuid.uuid4().hex[:12]
    server.s3.create_bucket(Bucket=name)
    yield name
    # SeaweedFS gives every bucket volumes of its own (a collection); a suite of ~100 tests runs out of
    # volumes (InternalError on PUT) unless each test's bucket goes when the test ends.
    try:
        for page in server.s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                server.s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        for u in server.s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            server.s3.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        server.s3.delete_bucket(Bucket=name)
    except Exception as e:  # a mount still writing, or the server gone: not the test's result
        print(f"could not delete bucket {name}: {e}")


class Mounts:
    def __init__(self, server, tmp):
        self.server = server
        self.tmp = tmp
        self.bin = ckptfs_bin()
        self.active = []

    def dirs(self):
        mp = os.path.join(self.tmp, "mnt-" + uuid.uuid4().hex[:8])
        os.makedirs(mp)
        return mp

    def run(self, *args, env=None, timeout=60):
        return subprocess.run([self.bin, *args], env=env or self.server.env(), capture_output=True, text=True,
                              timeout=timeout)

    def mount(self, url, mountpoint=None, cache=None, *extra, env=None):
        mp = mountpoint or self.dirs()
        cache = cache or os.path.join(self.tmp, "cache-" + uuid.uuid4().hex[:8])
        # notice: the log then says how the mount ended (a signal's drain, or an unmount from outside).
        level = () if "--log-level" in extra else ("--log-level", "notice")
        r = self.run("mount", url, mp, "--cache-dir", cache, *level, *extra, env=env)
        if r.returncode != 0:
            # The daemon's log goes with the test's directory: its end is what tells why.
            log = os.path.join(cache, "ckptfs.log")
            tail = open(log, errors="replace").read()[-4000:] if os.path.exists(log) else "(no log)"
            raise AssertionError(f"mount failed: {r.stderr}\ndaemon log, last 4000 characters:\n{tail}")
        self.active.append(mp)
        return mp, cache

    def mount_via(self, proxy, url, mountpoint=None, cache=None, *extra):
        """`mount` with the S3 endpoint at `proxy` (same credentials and options otherwise)."""
        return self.mount(url, mountpoint, cache, *extra, env=self.server.env(AWS_ENDPOINT_URL=proxy.endpoint))

    def unmount(self, mp):
        r = self.run("unmount", mp)
        assert r.returncode == 0, r.stderr
        self.active.remove(mp)

    def cleanup(self):
        for mp in self.active:
            pids = subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True, text=True).stdout.split()
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
            for p in pids:
                try:
                    os.kill(int(p), 9)
                except OSError:
                    pass


@pytest.fixture
def mounts(server, tmp_path):
    m = Mounts(server, str(tmp_path))
    yield m
    m.cleanup()


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@contextlib.contextmanager
def tmpfs(path, size):
    """A tmpfs of `size` (mount's size=, e.g. "8m") at `path` for the block: a cache disk that fills for real."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def wait_until(pred, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()
