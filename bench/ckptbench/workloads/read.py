"""read: cold sequential read of the shard (fresh mount and cache, kernel caches dropped: that empties the
server's page cache too, so "cold" is the whole stack), then a warm re-read (caches dropped again; mounts
serve from their disk cache). Figures in MB/s."""
import os
import time

from ..common import MiB, OUT, drop_caches, expect, log, sha_file, timed_read
from . import Workload, direct


class Read(Workload):
    name = "read"
    order = 10
    summary = "cold sequential read of a 1 GiB object (fresh cache, kernel caches dropped), then a warm re-read"
    latency = True
    uses_shard = True

    def start(self):
        log(f"workload read ({self.shard.size // MiB} MiB, latency {self.run.latency} ms)")
        return True

    def through_mount(self, m):
        size = self.shard.size
        drop_caches()
        m.mount()
        tok = self.start_measure(m)
        path = os.path.join(m.mp, self.shard.key)
        dt = timed_read(path)
        self.end_measure(tok)
        expect(sha_file(path) == self.shard.sha, f"{m.name} cold read")
        self.record("cold sequential read", "MB/s", "higher", m.name, size / dt / 1e6)
        drop_caches()
        tok = self.start_measure(m)
        dt = timed_read(path)
        self.end_measure(tok)
        self.record("warm re-read", "MB/s", "higher", m.name, size / dt / 1e6)

    @direct("local")
    def local(self, m):
        # The disk's own speed, for the warm figures: the same bytes from a local file, caches dropped.
        drop_caches()
        self.record("warm re-read", "MB/s", "higher", m.name, self.shard.size / timed_read(self.shard.path) / 1e6)

    @direct("s5cmd")
    def s5cmd(self, m):
        dst = os.path.join(OUT, "dl.bin")
        drop_caches()
        t0 = time.perf_counter()
        self.s3.s5cmd("cp", f"s3://{self.s3.bucket}/{self.shard.key}", dst)
        dt = time.perf_counter() - t0
        expect(sha_file(dst) == self.shard.sha, "s5cmd download")
        os.unlink(dst)
        self.record("cold sequential read", "MB/s", "higher", m.name, self.shard.size / dt / 1e6)

    @direct("boto3")
    def boto3(self, m):
        dst = os.path.join(OUT, "dl.bin")
        drop_caches()
        t0 = time.perf_counter()
        self.s3.make_client().download_file(self.s3.bucket, self.shard.key, dst, Config=m.transfer_config())
        dt = time.perf_counter() - t0
        expect(sha_file(dst) == self.shard.sha, "boto3 download")
        os.unlink(dst)
        self.record("cold sequential read", "MB/s", "higher", m.name, self.shard.size / dt / 1e6)
