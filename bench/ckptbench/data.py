"""Data more than one workload reads: the shard, a random object read by `read` and `random`."""
import os

from .common import MiB, OUT, expect, sha_file


class Shard:
    """A random object of 1 GiB (256 MiB with --quick) at s3://BUCKET/data/shard.bin, with its local copy at
    bench/out/shard.bin (the `local` system's warm read; the check of boto3's ranged reads)."""
    key = "data/shard.bin"

    def __init__(self, quick):
        self.size = (256 if quick else 1024) * MiB
        self.path = os.path.join(OUT, "shard.bin")
        self.sha = None

    def prepare(self, s3):
        with open(self.path, "wb") as f:
            for _ in range(self.size // MiB):
                f.write(os.urandom(MiB))
        self.sha = sha_file(self.path)
        s3.s5cmd("cp", self.path, f"s3://{s3.bucket}/{self.key}")
        expect(s3.sha(self.key) == self.sha, "uploaded shard")

    def cleanup(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
