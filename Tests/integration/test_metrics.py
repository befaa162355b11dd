"""Prometheus metrics of a real mount (`--metrics-address`), scraped over HTTP while the mount reads and writes.

Each step does something through the mount and then checks that the metrics it should move moved by exactly
what was done (files, bytes, requests), against a real SeaweedFS on loopback; the bytes themselves are checked
with boto3 by sha256.
"""
import hashlib
import json
import os
import re
import socket
import urllib.error
import urllib.request

import pytest

from conftest import is_mounted, wait_until

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sha(data):
    return hashlib.sha256(data).hexdigest()


def parse(text):
    """Prometheus text format -> {(name, frozenset(labels)): value}, and the families' types."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


class Scraper:
    def __init__(self, mounts, mp):
        r = mounts.run("status", mp, "--json")
        assert r.returncode == 0, r.stderr
        self.url = json.loads(r.stdout)["metricsURL"]
        assert self.url.startswith("http://127.0.0.1:") and self.url.endswith("/metrics"), self.url

    def scrape(self):
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return Sample(*parse(resp.read().decode()))


class Sample:
    def __init__(self, samples, types):
        self.samples, self.types = samples, types

    def get(self, name, **labels):
        """The sum over the series of `name` whose labels include `labels` (0 when there is none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))


def readme_metric_names():
    """The names in the README's Metrics table, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("\n## Metrics"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^\| `(ckptfs_[a-z_]+)`", section, re.M)


def test_metrics_move_with_reads_and_writes(server, bucket, mounts, tmp_path):
    data = os.urandom(4 * MiB + 123)
    server.s3.put_object(Bucket=bucket, Key="data.bin", Body=data)
    cache = str(tmp_path / "cache")
    # A long upload delay keeps a closed file queued until the flush, so the queue is a state, not a timing.
    mp, _ = mounts.mount(f"s3://{bucket}", None, cache, "--metrics-address", "127.0.0.1:0", "--upload-delay", "30")
    m = Scraper(mounts, mp)
    first = m.scrape()
    # Every family of the README's table is served with its type (S3 request families once a request was
    # made; the expiry only for credentials that expire: these are static keys).
    names = readme_metric_names()
    assert len(names) >= 25
    for name in names:
        if name.startswith("ckptfs_s3_") or name == "ckptfs_credentials_expiry_seconds":
            continue
        assert name in first.types, f"{name} missing from /metrics"
    assert "ckptfs_credentials_expiry_seconds" not in first.types
    assert first.get("ckptfs_dirty_files") == 0 and first.get("ckptfs_uploaded_files_total") == 0
    assert first.get("ckptfs_credentials_refreshes_total") == 0

    # A write: dirty and queued until the flush, then uploaded with one PutObject of its bytes.
    payload = os.urandom(5 * MiB + 7)
    with open(os.path.join(mp, "w.bin"), "wb") as f:
        f.write(payload)
    # The kernel sends the release (which queues the file) after close() returns: wait for it.
    assert wait_until(lambda: m.scrape().get("ckptfs_upload_queue_files") == 1, timeout=10)
    queued = m.scrape()
    assert queued.get("ckptfs_dirty_files") == 1
    assert queued.get("ckptfs_dirty_bytes") == len(payload)
    assert queued.get("ckptfs_upload_queue_files") == 1
    assert queued.get("ckptfs_uploaded_files_total") == 0
    assert queued.get("ckptfs_staging_bytes") >= len(payload)
    r = mounts.run("flush", mp)
    assert r.returncode == 0, r.stderr
    assert sha(server.s3.get_object(Bucket=bucket, Key="w.bin")["Body"].read()) == sha(payload)
    flushed = m.scrape()
    assert flushed.get("ckptfs_dirty_files") == 0 and flushed.get("ckptfs_dirty_bytes") == 0
    assert flushed.get("ckptfs_upload_queue_files") == 0
    assert flushed.get("ckptfs_uploaded_files_total") == 1
    assert flushed.get("ckptfs_uploaded_bytes_total") == len(payload)
    assert flushed.get("ckptfs_s3_requests_total", operation="PutObject", status="ok") == 1
    assert flushed.get("ckptfs_s3_sent_bytes_total", operation="PutObject") == len(payload)
    assert flushed.get("ckptfs_s3_request_duration_seconds_count", operation="PutObject") == 1
    assert flushed.types["ckptfs_s3_request_duration_seconds"] == "histogram"
    assert flushed.types["ckptfs_s3_requests_total"] == "counter"

    # A cold read: block cache misses, GETs of its bytes, and the blocks cached.
    with open(os.path.join(mp, "data.bin"), "rb") as f:
        assert sha(f.read()) == sha(data)
    blocks = (len(data) + MiB - 1) // MiB
    # Blocks are written to the cache off the network threads, so the last ones may land just after the read
    # returned: wait for the cache to hold them all (no event to wait on from outside the daemon).
    assert wait_until(lambda: m.scrape().get("ckptfs_cache_stored_bytes_total") >= len(data), timeout=20)
    cold = m.scrape()
    # (a miss is counted per lookup that found nothing; one lookup can start the fetch of many blocks)
    assert cold.get("ckptfs_cache_misses_total") > flushed.get("ckptfs_cache_misses_total")
    assert cold.get("ckptfs_s3_received_bytes_total", operation="GetObject") >= len(data)
    assert cold.get("ckptfs_s3_requests_total", operation="GetObject", status="ok") >= 1
    assert cold.get("ckptfs_cache_stored_bytes_total") >= len(data)
    assert cold.get("ckptfs_cache_used_bytes") >= len(data)
    assert cold.get("ckptfs_cache_blocks") >= blocks
    # Counters never go down between scrapes.
    for (name, labels), v in flushed.samples.items():
        if flushed.types.get(name) == "counter":
            assert cold.samples.get((name, labels), 0) >= v, name

    # The same file after a remount with the same cache: hits, and no GET at all.
    mounts.unmount(mp)
    mp2, _ = mounts.mount(f"s3://{bucket}", None, cache, "--metrics-address", "127.0.0.1:0")
    m2 = Scraper(mounts, mp2)
    with open(os.path.join(mp2, "data.bin"), "rb") as f:
        assert sha(f.read()) == sha(data)
    warm = m2.scrape()
    assert warm.get("ckptfs_cache_hits_total") >= 1
    assert warm.get("ckptfs_cache_served_bytes_total") >= len(data)
    assert warm.get("ckptfs_cache_misses_total") == 0
    assert warm.get("ckptfs_s3_requests_total", operation="GetObject") == 0
    assert warm.get("ckptfs_s3_received_bytes_total") == 0
    # Only /metrics is served.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(m2.url.replace("/metrics", "/other"), timeout=10)
    assert e.value.code == 404


def test_metrics_address_in_use_or_malformed_fails_the_mount(server, bucket, mounts):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        mp = mounts.dirs()
        r = mounts.run("mount", f"s3://{bucket}", mp, "--metrics-address", f"127.0.0.1:{port}")
        assert r.returncode != 0
        assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr and "fix:" in r.stderr, r.stderr
        assert not is_mounted(mp)
    finally:
        taken.close()
    for bad, why in [("9464x", "is not a TCP port"), ("example.com:9464", "is not an IP address"), ("::1:9464", "brackets")]:
        r = mounts.run("mount", f"s3://{bucket}", mounts.dirs(), "--metrics-address", bad)
        assert r.returncode != 0 and why in r.stderr and "write HOST:PORT" in r.stderr, r.stderr
