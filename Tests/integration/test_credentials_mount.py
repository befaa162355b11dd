"""Temporary credentials through a real mount: what `ckptfs status` and the metrics say about them, and a mount
that keeps writing while they expire every minute.

The credentials come from Tests/Harness/credentials_standin.py playing the container credentials endpoint
(ECS, SageMaker) on loopback, with short lifetimes and new keys at every fetch. The same process is the S3
endpoint of the mount: a gateway that checks each request's SigV4 and session token against the credentials it
issued (expired or revoked: 400 ExpiredToken) and sends it on, signed with SeaweedFS's static keys, to the real
SeaweedFS of the other mount tests. What lands is checked with boto3 directly on SeaweedFS by sha256.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT, wait_until

MiB = 1 << 20


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Gateway:
    def __init__(self, server, lifetime):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "Tests", "Harness", "credentials_standin.py"), "--lifetime", str(lifetime),
             "--rotate", "--upstream", server.endpoint, "--upstream-key",
             f"{server.info['access_key']}:{server.info['secret_key']}", "--max-seconds", "900"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
        e.update(AWS_ENDPOINT_URL=self.url, AWS_CONTAINER_CREDENTIALS_FULL_URI=self.url + "/container/credentials",
                 AWS_REGION="us-east-1", AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                 AWS_EC2_METADATA_DISABLED="true")
        return e

    def control(self, what):
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/_standin/{what}", data=b""), timeout=10).read()

    def stats(self):
        return json.loads(urllib.request.urlopen(f"{self.url}/_standin/stats", timeout=10).read())

    def issued_secrets(self):
        """The secret keys and session tokens handed out so far (the stand-in derives them from the key ids)."""
        out = []
        for akid in self.stats()["akids_used"]:
            out.append(hashlib.sha256(("secret-" + akid).encode()).hexdigest()[:40])
            out.append("tok-%s-%s" % (akid, hashlib.sha256(("token-" + akid).encode()).hexdigest()[:24]))
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def gateway_factory(server):
    made = []

    def make(lifetime):
        g = Gateway(server, lifetime)
        made.append(g)
        return g
    yield make
    for g in made:
        g.close()


def status(mounts, mp, env):
    r = mounts.run("status", mp, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_status_and_metrics_show_the_credentials_and_a_failing_refresh_with_its_fix(server, bucket, mounts, gateway_factory):
    """Credentials valid 20 s: status names the source, key id and expiry; while the endpoint fails, status and
    the metrics show the failing refresh with the fix, a file closed meanwhile stays journaled, and once the
    endpoint is back the upload resumes and lands. No secret ever shows in status, metrics or the trace log."""
    g = gateway_factory(20)
    env = g.env()
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--metrics-address", "127.0.0.1:0", "--log-level", "trace",
                             "--upload-delay", "25", env=env)
    s = status(mounts, mp, env)
    c = s["credentials"]
    assert c["source"] == "container credentials" and c["accessKeyId"].startswith("ASIAECS")
    assert 0 < c["expiresInSeconds"] <= 20 and c["expiration"].endswith("Z")
    assert c["consecutiveFailures"] == 0 and "lastError" not in c
    text = mounts.run("status", mp, env=env).stdout
    assert f"credentials:      {c['accessKeyId']} from container credentials, expires {c['expiration']}" in text, text

    g.control("fail")
    payload = os.urandom(3 * MiB + 5)
    with open(os.path.join(mp, "while-failing.bin"), "wb") as f:
        f.write(payload)
    # The refresh at half-life (10 s) fails, and is tried again: status says so, with the source and the fix.
    assert wait_until(lambda: status(mounts, mp, env)["credentials"]["consecutiveFailures"] >= 1, timeout=40)
    c = status(mounts, mp, env)["credentials"]
    assert c["lastError"].startswith("container credentials: ") and "500" in c["lastError"], c
    assert c["fix"], c
    text = mounts.run("status", mp, env=env).stdout
    assert "refresh failing" in text and "\n  fix: " in text, text
    metrics = urllib.request.urlopen(status(mounts, mp, env)["metricsURL"], timeout=10).read().decode()
    failures = [l for l in metrics.splitlines() if l.startswith("ckptfs_credentials_refresh_failures ")]
    assert failures and float(failures[0].split()[1]) >= 1, metrics
    expiry = [l for l in metrics.splitlines() if l.startswith("ckptfs_credentials_expiry_seconds ")]
    assert expiry and float(expiry[0].split()[1]) <= 20
    # Past the expiry the upload is tried and fails: the file stays dirty, nothing is dropped.
    assert wait_until(lambda: any(p.get("error") for p in status(mounts, mp, env)["writeBack"]["pending"]), timeout=60)
    assert "while-failing.bin" not in [o["Key"] for o in server.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    g.control("recover")
    r = mounts.run("flush", mp, "--timeout", "120", env=env, timeout=150)
    assert r.returncode == 0, r.stderr
    assert sha(server.s3.get_object(Bucket=bucket, Key="while-failing.bin")["Body"].read()) == sha(payload)
    c = status(mounts, mp, env)["credentials"]
    assert c["consecutiveFailures"] == 0 and c["refreshes"] >= 1 and c["expiresInSeconds"] > 0, c

    # Never a secret: not in status (text or JSON), not in the metrics, not in the trace log.
    outputs = [mounts.run("status", mp, env=env).stdout, mounts.run("status", mp, "--json", env=env).stdout,
               urllib.request.urlopen(status(mounts, mp, env)["metricsURL"], timeout=10).read().decode()]
    mounts.unmount(mp)
    log = open(os.path.join(cache, "ckptfs.log")).read()
    assert "credentials refresh failed" in log
    secrets = g.issued_secrets()
    assert len(secrets) >= 4
    for secret in secrets:
        for out in outputs + [log]:
            assert secret not in out


ROTATION_SECONDS = int(os.environ.get("CKPTFS_ROTATION_SECONDS", "180"))


def test_a_mount_keeps_writing_while_credentials_expire_every_minute(server, bucket, mounts, gateway_factory):
    """Credentials valid 60 s, new keys at every fetch, for ROTATION_SECONDS (3 minutes: three expiries and
    refreshes): checkpoints saved the way trainers save them (a temp file renamed into place, some fsynced, one
    of 40 MiB in parts) keep going up, and once midway every credential handed out is revoked (S3 answers
    ExpiredToken until a refresh). Every acknowledged file lands byte-exact; none is lost."""
    g = gateway_factory(60)
    env = g.env()
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "0.2", "--log-level", "info", env=env)
    rnd = random.Random(17)
    written = {}
    start = time.time()
    revoked = False
    i = 0
    while time.time() - start < ROTATION_SECONDS:
        i += 1
        size = 40 * MiB if i == 7 else rnd.randrange(64 << 10, 3 * MiB)
        data = os.urandom(size)
        name = f"ckpt-{i:04d}.bin"
        tmp = os.path.join(mp, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if i % 5 == 0:
                f.flush()
                os.fsync(f.fileno())  # durable in S3 when it returns (--fsync durable)
        os.replace(tmp, os.path.join(mp, name))
        written[name] = sha(data)
        if not revoked and time.time() - start > ROTATION_SECONDS / 2:
            g.control("expire")
            revoked = True
        time.sleep(1.0)
    r = mounts.run("flush", mp, "--timeout", "180", env=env, timeout=200)
    assert r.returncode == 0, r.stderr
    s = status(mounts, mp, env)
    mounts.unmount(mp)

    landed = {}
    for page in server.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            landed[o["Key"]] = sha(server.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
    assert landed == written, f"missing {sorted(set(written) - set(landed))}, extra {sorted(set(landed) - set(written))}"
    st = g.stats()
    # Refreshed in the background at half-life (about every 30 s), plus once after the revocation.
    assert st["fetches"]["ECS"] >= ROTATION_SECONDS // 30, st
    assert len(st["akids_used"]) >= ROTATION_SECONDS // 30, st
    assert s["credentials"]["refreshes"] >= ROTATION_SECONDS // 30 - 1, s["credentials"]
    assert s["credentials"]["consecutiveFailures"] == 0
    log = open(os.path.join(cache, "ckptfs.log")).read()
    assert "credentials rejected as expired; refreshing and retrying" in log
