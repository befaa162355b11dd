"""random: fio random reads, 4 KiB and 256 KiB, 4 jobs, 10 s (5 s with --quick), over the shard: cold (fresh
mount and cache) and cached (after a full read). Direct S3 (boto3): ranged GETs at random offsets from 4
threads. Figures in IOPS. Skipped with a note if fio is missing."""
import concurrent.futures as cf
import json
import os
import random
import shutil
import time

from ..common import drop_caches, expect, log, sh, sha_file
from . import Workload, direct


class Random(Workload):
    name = "random"
    order = 40
    summary = "fio random reads (4 KiB and 256 KiB) over the 1 GiB object, cold and cached"
    uses_shard = True
    apt_tools = ("fio",)
    version_commands = {"fio": ["fio", "--version"]}

    def __init__(self, run):
        super().__init__(run)
        self.runtime = 5 if self.quick else 10

    def sizes(self):
        return {"fio_runtime_s": self.runtime}

    def start(self):
        if not shutil.which("fio"):
            self.run.notes.append("random: fio not installed, skipped")
            return False
        log("workload random (fio)")
        return True

    def fio(self, path, bs):
        """IOPS of 4 fio jobs reading `path` at random in `bs` blocks for the runtime."""
        out = sh(["fio", "--name=rand", f"--filename={path}", "--rw=randread", f"--bs={bs}", "--direct=0",
                  "--ioengine=psync", "--numjobs=4", f"--runtime={self.runtime}", "--time_based", "--readonly",
                  "--output-format=json", "--invalidate=1", "--group_reporting"], timeout=300).stdout
        return json.loads(out)["jobs"][0]["read"]["iops"]

    def through_mount(self, m):
        path = os.path.join(m.mp, self.shard.key)
        for bs in ("4k", "256k"):
            m.unmount()
            shutil.rmtree(m.cache, ignore_errors=True)
            os.makedirs(m.cache)
            drop_caches()
            m.mount()
            tok = self.start_measure(m)
            self.record(f"{bs} random read IOPS, cold", "IOPS", "higher", m.name, self.fio(path, bs))
            self.end_measure(tok)
            expect(sha_file(path) == self.shard.sha, f"{m.name} file after random reads")  # also fills the cache
            drop_caches()
            tok = self.start_measure(m)
            self.record(f"{bs} random read IOPS, cached", "IOPS", "higher", m.name, self.fio(path, bs))
            self.end_measure(tok)

    @direct("boto3")
    def boto3(self, m):
        # Ranged GETs at random offsets, 4 threads, as a direct-S3 reference for the cold figure.
        c = self.s3.make_client()
        raw = open(self.shard.path, "rb").read() if os.path.exists(self.shard.path) else None
        size = self.shard.size
        for bs, n in (("4k", 4096), ("256k", 256 * 1024)):
            end = time.monotonic() + self.runtime
            count = [0]

            def worker(seed):
                rng = random.Random(seed)
                while time.monotonic() < end:
                    off = rng.randrange(0, size - n) // 4096 * 4096
                    b = c.get_object(Bucket=self.s3.bucket, Key=self.shard.key,
                                     Range=f"bytes={off}-{off + n - 1}")["Body"].read()
                    if raw is not None:
                        expect(b == raw[off:off + n], "boto3 ranged read")
                    count[0] += 1
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(4) as ex:
                list(ex.map(worker, range(4)))
            self.record(f"{bs} random read IOPS, cold", "IOPS", "higher", m.name, count[0] / (time.perf_counter() - t0))
