"""meta: `ls -l` of a directory of 10,000 objects (2,000 with --quick) on a fresh mount (direct: a paginated
LIST, `s5cmd ls`), then `stat` of 1,000 of them by name on a fresh mount (direct: HEAD)."""
import os
import random
import time

from ..common import OUT, expect, log, sh
from . import Workload, direct


class Meta(Workload):
    name = "meta"
    order = 50
    summary = "`ls -l` of a 10,000-object directory on a fresh mount; stat rate of 1,000 files by name"
    latency = True

    def __init__(self, run):
        super().__init__(run)
        self.n = 2000 if self.quick else 10000

    def sizes(self):
        return {"meta_objects": self.n}

    def prepare(self):
        """meta/objNNNNN, object i holding i % 100 bytes."""
        # One request at a time per object took about 10 minutes from Python; `s5cmd run` puts the
        # 10,000 objects (sizes 0-99 bytes) in parallel in seconds.
        src = os.path.join(OUT, "meta-src")
        os.makedirs(src, exist_ok=True)
        for n in range(100):
            with open(os.path.join(src, f"m{n}"), "wb") as f:
                f.write(b"m" * n)
        cmds = os.path.join(OUT, "meta-put.txt")
        with open(cmds, "w") as f:
            for i in range(self.n):
                f.write(f"cp {src}/m{i % 100} s3://{self.s3.bucket}/meta/obj{i:05d}\n")
        self.s3.s5cmd("run", cmds)
        last = self.n - 1
        head = self.s3.make_client().head_object(Bucket=self.s3.bucket, Key=f"meta/obj{last:05d}")
        expect(head["ContentLength"] == last % 100, "meta objects uploaded")

    def start(self):
        log(f"workload meta ({self.n} objects, latency {self.run.latency} ms)")
        names = [f"obj{i:05d}" for i in range(self.n)]
        self.sample = random.Random(2).sample(names, min(1000, self.n))
        return True

    @property
    def ls_figure(self):
        return f"ls -l of {self.n} objects"

    def through_mount(self, m):
        m.mount()
        tok = self.start_measure(m)
        t0 = time.perf_counter()
        out = sh(["ls", "-l", os.path.join(m.mp, "meta")], timeout=900).stdout
        dt = time.perf_counter() - t0
        expect(len(out.strip().splitlines()) - 1 == self.n, f"{m.name}: ls -l lists every object")
        self.record(self.ls_figure, "s", "lower", m.name, dt)
        self.end_measure(tok)
        m.unmount()
        m.mount()
        tok = self.start_measure(m)
        t0 = time.perf_counter()
        for n in self.sample:
            st = os.stat(os.path.join(m.mp, "meta", n))
            expect(st.st_size == int(n[3:]) % 100, f"{m.name}: size of {n}")
        self.record("stat by name, cold", "stats/s", "higher", m.name, len(self.sample) / (time.perf_counter() - t0))
        self.end_measure(tok)

    @direct("boto3")
    def boto3(self, m):
        c = self.s3.make_client()
        t0 = time.perf_counter()
        keys = self.s3.keys("meta/")
        self.record(self.ls_figure, "s", "lower", m.name, time.perf_counter() - t0)
        expect(len(keys) == self.n, "boto3 list")
        t0 = time.perf_counter()
        for n in self.sample:
            h = c.head_object(Bucket=self.s3.bucket, Key="meta/" + n)
            expect(h["ContentLength"] == int(n[3:]) % 100, f"boto3 head {n}")
        self.record("stat by name, cold", "stats/s", "higher", m.name, len(self.sample) / (time.perf_counter() - t0))

    @direct("s5cmd")
    def s5cmd(self, m):
        t0 = time.perf_counter()
        out = self.s3.s5cmd("ls", f"s3://{self.s3.bucket}/meta/*").stdout
        self.record(self.ls_figure, "s", "lower", m.name, time.perf_counter() - t0)
        expect(len(out.strip().splitlines()) == self.n, "s5cmd ls")
