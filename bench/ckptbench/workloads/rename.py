"""rename: rename of a 256 MiB object and of a directory of 100 files, timed until the new keys are in S3
(direct: CopyObject + DeleteObject with boto3, `s5cmd mv`). Figures in seconds."""
import concurrent.futures as cf
import hashlib
import os
import time

from ..common import MiB, OUT, expect, log
from . import Workload, direct

FILE = "rename a 256 MiB file"
DIRECTORY = "rename a directory of 100 files"


class Rename(Workload):
    name = "rename"
    order = 60
    summary = "rename of a 256 MiB object and of a directory of 100 files"

    def __init__(self, run):
        super().__init__(run)
        self.size = 256 * MiB

    def start(self):
        log("workload rename")
        self.c = self.s3.make_client()
        self.chunk = os.urandom(MiB)
        self.want = hashlib.sha256(self.chunk * 256).hexdigest()
        return True

    def setup(self, tag):
        """ren-TAG/big.bin (256 MiB) and ren-TAG/dir/f000..f099 (1,000 bytes each)."""
        local = os.path.join(OUT, "ren.bin")
        with open(local, "wb") as f:
            for _ in range(256):
                f.write(self.chunk)
        self.s3.s5cmd("cp", local, f"s3://{self.s3.bucket}/ren-{tag}/big.bin")
        os.unlink(local)
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: self.c.put_object(Bucket=self.s3.bucket, Key=f"ren-{tag}/dir/f{i:03d}",
                                                    Body=b"x" * 1000), range(100)))

    def one(self, m):
        """Sets up ren-NAME/, measures `m`, checks the keys in S3 and deletes them."""
        fn = self.handler(m)
        if not fn:
            return
        tag = m.name
        self.setup(tag)
        fn(m)
        keys = set(k for k in self.s3.keys(f"ren-{tag}/") if not k.endswith("/"))  # markers some mounts add
        expect(f"ren-{tag}/big.bin" not in keys and f"ren-{tag}/moved.bin" in keys, f"{m.name}: file renamed in S3")
        expect(self.s3.sha(f"ren-{tag}/moved.bin") == self.want, f"{m.name}: renamed file contents")
        expect(sum(k.startswith(f"ren-{tag}/dir2/") for k in keys) == 100 and
               not any(k.startswith(f"ren-{tag}/dir/") for k in keys), f"{m.name}: directory renamed in S3")
        self.s3.delete_prefix(f"ren-{tag}/")

    def through_mount(self, m):
        tag = m.name
        m.mount()
        tok = self.start_measure(m)
        base = os.path.join(m.mp, f"ren-{tag}")
        os.listdir(base)
        t0 = time.perf_counter()
        os.rename(os.path.join(base, "big.bin"), os.path.join(base, "moved.bin"))
        m.durable([(f"ren-{tag}/moved.bin", self.size)])
        self.record(FILE, "s", "lower", m.name, time.perf_counter() - t0)
        t0 = time.perf_counter()
        os.rename(os.path.join(base, "dir"), os.path.join(base, "dir2"))
        m.durable([(f"ren-{tag}/dir2/f{i:03d}", 1000) for i in range(100)])
        self.record(DIRECTORY, "s", "lower", m.name, time.perf_counter() - t0)
        self.end_measure(tok)

    @direct("boto3")
    def boto3(self, m):
        tag, c, bucket = m.name, self.c, self.s3.bucket
        t0 = time.perf_counter()
        c.copy_object(Bucket=bucket, Key=f"ren-{tag}/moved.bin", CopySource={"Bucket": bucket, "Key": f"ren-{tag}/big.bin"})
        c.delete_object(Bucket=bucket, Key=f"ren-{tag}/big.bin")
        self.record(FILE, "s", "lower", m.name, time.perf_counter() - t0)
        t0 = time.perf_counter()

        def mv(i):
            c.copy_object(Bucket=bucket, Key=f"ren-{tag}/dir2/f{i:03d}",
                          CopySource={"Bucket": bucket, "Key": f"ren-{tag}/dir/f{i:03d}"})
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(mv, range(100)))
        self.s3.delete_prefix(f"ren-{tag}/dir/")
        self.record(DIRECTORY, "s", "lower", m.name, time.perf_counter() - t0)

    @direct("s5cmd")
    def s5cmd(self, m):
        tag, bucket = m.name, self.s3.bucket
        t0 = time.perf_counter()
        self.s3.s5cmd("mv", f"s3://{bucket}/ren-{tag}/big.bin", f"s3://{bucket}/ren-{tag}/moved.bin")
        self.record(FILE, "s", "lower", m.name, time.perf_counter() - t0)
        t0 = time.perf_counter()
        self.s3.s5cmd("mv", f"s3://{bucket}/ren-{tag}/dir/*", f"s3://{bucket}/ren-{tag}/dir2/")
        self.record(DIRECTORY, "s", "lower", m.name, time.perf_counter() - t0)
