"""save: a 2 GiB checkpoint (512 MiB with --quick) written in 1 MiB writes like torch.save. Figures: time until
close() returns, and until the object is durable in S3 (ckptfs: `ckptfs flush`; s3fs: close uploads; rclone:
polled with HEAD; s5cmd/boto3: local write, then upload). ckptfs is also measured with --upload-while-writing,
and `local` both without and with fsync (what ckptfs's close() guarantees)."""
import hashlib
import os
import time

from ..common import MiB, OUT, SUBJECT, drop_caches, expect, log, sha_file
from . import Workload, direct

UPLOAD_WHILE_WRITING = ", upload while writing"


class Save(Workload):
    name = "save"
    order = 20
    summary = "a 2 GiB checkpoint written in 1 MiB writes like torch.save: time to close, time to durable in S3"

    def __init__(self, run):
        super().__init__(run)
        self.size = (512 if self.quick else 2048) * MiB

    def sizes(self):
        return {"save_bytes": self.size}

    def prepare(self):
        self.chunk = os.urandom(MiB)
        self.sha = hashlib.sha256(self.chunk * (self.size // MiB)).hexdigest()

    def start(self):
        log(f"workload save ({self.size // MiB} MiB checkpoint)")
        return True

    def write(self, path, fsync=False):
        """Seconds to write the checkpoint to `path` in 1 MiB writes and close it (fsync first if asked)."""
        t0 = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            for _ in range(self.size // MiB):
                f.write(self.chunk)
            if fsync:
                os.fsync(f.fileno())
        return time.perf_counter() - t0

    def finish(self, m, key, label, close, durable):
        """Checks the object in S3, records the figures, deletes it."""
        expect(self.s3.sha(key) == self.sha, f"{m.name}{label} checkpoint in S3")
        self.record("time to close()" + label, "s", "lower", m.name, close)
        if m.name == SUBJECT and not label:
            # close() returns with the data on local disk: compare with a local write + fsync.
            self.record("time to close(), on disk", "s", "lower", m.name, close)
        self.record("time to durable in S3" + label, "s", "lower", m.name, durable)
        self.s3.delete_prefix(key)

    def through_mount(self, m):
        key = f"save/{m.name}.pt"
        # ckptfs twice: as mounted by default (the upload starts after close), and with parts going up
        # while the file is written (--upload-while-writing).
        variants = [("", ())]
        if m.name == SUBJECT:
            variants.append((UPLOAD_WHILE_WRITING, ("--upload-while-writing",)))
        for label, extra in variants:
            if label:
                m.unmount()
                m.fresh()
            m.mount(*extra)
            tok = None if label else self.start_measure(m)
            os.makedirs(os.path.join(m.mp, "save"), exist_ok=True)
            if m.name == SUBJECT:
                drop_caches()
            t0 = time.perf_counter()
            close = self.write(os.path.join(m.mp, key))
            m.durable([(key, self.size)])
            durable = time.perf_counter() - t0
            self.end_measure(tok)
            self.finish(m, key, label, close, durable)

    @direct("local")
    def local(self, m):
        # Two references: the page cache (close() without fsync), and the same bytes on disk
        # (fsync before close), which is what ckptfs's close() guarantees.
        local = os.path.join(OUT, "save-local.pt")
        self.record("time to close()", "s", "lower", m.name, self.write(local))
        expect(sha_file(local) == self.sha, "local checkpoint")
        os.unlink(local)
        drop_caches()
        self.record("time to close(), on disk", "s", "lower", m.name, self.write(local, fsync=True))
        expect(sha_file(local) == self.sha, "local checkpoint (fsync)")
        os.unlink(local)

    def write_then_upload(self, m, upload):
        """A direct client: the checkpoint written locally, then `upload(local path, key)`; durable is the
        write plus the upload."""
        key = f"save/{m.name}.pt"
        local = os.path.join(OUT, "save-local.pt")
        close = self.write(local)
        t0 = time.perf_counter()
        upload(local, key)
        durable = close + time.perf_counter() - t0
        os.unlink(local)
        self.finish(m, key, "", close, durable)

    @direct("s5cmd")
    def s5cmd(self, m):
        self.write_then_upload(m, lambda local, key: self.s3.s5cmd("cp", local, f"s3://{self.s3.bucket}/{key}"))

    @direct("boto3")
    def boto3(self, m):
        self.write_then_upload(m, lambda local, key: self.s3.make_client().upload_file(
            local, self.s3.bucket, key, Config=m.transfer_config()))
