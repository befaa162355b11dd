"""small: 1,000 files of 64 KiB (200 with --quick) written and made durable, then a cold read of 1,000 files
with 1 reader and with 8 (s5cmd: one batch download, counted as 8 readers). Figures in files/s."""
import concurrent.futures as cf
import hashlib
import os
import random
import shutil
import time

from ..common import OUT, drop_caches, expect, log
from . import Workload, direct


def readers_figure(readers):
    return f"cold read, {readers} reader{'s' if readers > 1 else ''}"


class Small(Workload):
    name = "small"
    order = 30
    summary = "1,000 x 64 KiB written and made durable; cold read of 1,000 files with 1 reader and with 8"
    latency = True

    def __init__(self, run):
        super().__init__(run)
        self.n = 200 if self.quick else 1000

    def sizes(self):
        return {"small_files": self.n}

    def prepare(self):
        """The files' contents (the same every run) and the read set at small/fNNNNN.bin."""
        rng = random.Random(1)
        self.files = [rng.randbytes(64 * 1024) for _ in range(self.n)]
        self.sha = hashlib.sha256(b"".join(self.files)).hexdigest()
        c = self.s3.make_client()

        def put_small(i):
            c.put_object(Bucket=self.s3.bucket, Key=f"small/f{i:05d}.bin", Body=self.files[i])

        with cf.ThreadPoolExecutor(16) as ex:
            list(ex.map(put_small, range(self.n)))

    def start(self):
        log(f"workload small ({self.n} x 64 KiB, latency {self.run.latency} ms)")
        return True

    def one(self, m):
        """Measures `m`, then checks what it wrote under smallw-NAME/ and deletes it."""
        fn = self.handler(m)
        if not fn:
            return
        prefix = self.prefix(m)
        fn(m)
        self.check_written(prefix)
        self.s3.delete_prefix(prefix)

    @staticmethod
    def prefix(m):
        """Where system `m` writes its files."""
        return f"smallw-{m.name}/"

    def check_written(self, prefix):
        got = hashlib.sha256()
        c = self.s3.make_client()
        keys = sorted(k for k in self.s3.keys(prefix) if not k.endswith("/"))  # not the mkdir marker
        expect(len(keys) == self.n, f"{prefix}: {len(keys)} objects, wanted {self.n}")
        for k in keys:
            got.update(c.get_object(Bucket=self.s3.bucket, Key=k)["Body"].read())
        expect(got.hexdigest() == self.sha, f"{prefix} contents")

    def read_all(self, paths, readers):
        """Seconds for `readers` threads to read every file in `paths` (checked)."""
        def one(p):
            with open(p, "rb") as f:
                return f.read()
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(readers) as ex:
            datas = list(ex.map(one, paths))
        dt = time.perf_counter() - t0
        expect(hashlib.sha256(b"".join(datas)).hexdigest() == self.sha, f"small files read with {readers}")
        return dt

    def through_mount(self, m):
        N, prefix = self.n, self.prefix(m)
        m.mount()
        tok = self.start_measure(m)
        d = os.path.join(m.mp, prefix)
        os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        for i, b in enumerate(self.files):
            with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
                f.write(b)
        m.durable([(f"{prefix}f{i:05d}.bin", len(b)) for i, b in enumerate(self.files)])
        dt = time.perf_counter() - t0
        self.end_measure(tok)
        self.record("write + durable", "files/s", "higher", m.name, N / dt)
        for readers in (1, 8):
            m.unmount()
            shutil.rmtree(m.cache, ignore_errors=True)
            os.makedirs(m.cache)
            drop_caches()
            m.mount()
            tok = self.start_measure(m)
            dt = self.read_all([os.path.join(m.mp, "small", f"f{i:05d}.bin") for i in range(N)], readers)
            self.end_measure(tok)
            self.record(readers_figure(readers), "files/s", "higher", m.name, N / dt)

    @direct("s5cmd")
    def s5cmd(self, m):
        N, prefix = self.n, self.prefix(m)
        ld = os.path.join(OUT, "small-local")
        shutil.rmtree(ld, ignore_errors=True)
        os.makedirs(ld)
        t0 = time.perf_counter()
        for i, b in enumerate(self.files):
            with open(os.path.join(ld, f"f{i:05d}.bin"), "wb") as f:
                f.write(b)
        self.s3.s5cmd("cp", f"{ld}/*", f"s3://{self.s3.bucket}/{prefix}")
        self.record("write + durable", "files/s", "higher", m.name, N / (time.perf_counter() - t0))
        shutil.rmtree(ld)
        drop_caches()
        t0 = time.perf_counter()
        self.s3.s5cmd("cp", f"s3://{self.s3.bucket}/small/*", ld + "/")
        dt = time.perf_counter() - t0
        got = hashlib.sha256(b"".join(open(os.path.join(ld, f"f{i:05d}.bin"), "rb").read() for i in range(N)))
        expect(got.hexdigest() == self.sha, "s5cmd small download")
        shutil.rmtree(ld)
        self.record(readers_figure(8), "files/s", "higher", m.name, N / dt)

    @direct("boto3")
    def boto3(self, m):
        N, prefix = self.n, self.prefix(m)
        c = self.s3.make_client()
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: c.put_object(Bucket=self.s3.bucket, Key=f"{prefix}f{i:05d}.bin",
                                               Body=self.files[i]), range(N)))
        self.record("write + durable", "files/s", "higher", m.name, N / (time.perf_counter() - t0))
        for readers in (1, 8):
            drop_caches()
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(readers) as ex:
                datas = list(ex.map(lambda i: c.get_object(Bucket=self.s3.bucket, Key=f"small/f{i:05d}.bin")
                                    ["Body"].read(), range(N)))
            dt = time.perf_counter() - t0
            expect(hashlib.sha256(b"".join(datas)).hexdigest() == self.sha, "boto3 small read")
            self.record(readers_figure(readers), "files/s", "higher", m.name, N / dt)
