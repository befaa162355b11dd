"""torch-save: torch.save of a state dict (float32 tensors; 2 GiB, 512 MiB with --quick) until it is durable in
S3, in rounds (medians). ckptfs: torch.save to a file on the mount, then fsync (fsync returns once the file is
in S3, `--fsync durable`); s3torch: the S3 Connector for PyTorch's S3Checkpoint writer (its close completes
the upload); s5cmd: torch.save to a local file, then `s5cmd cp` of it. CPU per GiB: the writer process's CPU
(the CRT client's threads and s5cmd included) plus, for ckptfs, the daemon's over the same interval. Also the
time until close() returns (no fsync) against `local`, torch.save to a local file + fsync (what ckptfs's
close() guarantees). Every object's sha256 is checked against the reference checkpoint's."""
import os

from ..common import OUT, drop_caches, expect, sh, sha_file
from . import direct
from ._torch import GiB, Reference, TorchWorkload, size_label, torch_available


class TorchSave(TorchWorkload):
    name = "torch-save"
    order = 80
    summary = ("torch.save of a 2 GiB state dict until durable in S3: ckptfs (fsync) vs s3torch (S3Checkpoint) vs "
               "torch.save + s5cmd cp; CPU per GiB; close() vs a local torch.save + fsync")

    def __init__(self, run):
        super().__init__(run)
        self.ref = Reference.of(run)

    def sizes(self):
        return {"torch_save_mib": self.ref.size_mib}

    def describe(self):
        return f"{self.ref.size_mib} MiB state dict"

    def prepare(self):
        if torch_available():
            self.ref.make()

    @property
    def label(self):
        return size_label(self.ref.size_mib << 20)

    def durable(self, system, out):
        self.sample(f"{self.label} torch.save until durable in S3", "s", "lower", system, out["seconds"])
        cpu = out["cpu"] + out.get("daemon_cpu", 0.0)
        self.sample("CPU s per GiB until durable (writer + daemon; peer: its process)", "s", "lower", system,
                    cpu * GiB / out["bytes"])

    def check(self, key, what):
        expect(self.s3.sha(key) == self.ref.sha, what)
        self.s3.delete_prefix(key)

    def through_mount(self, m):
        key = f"torch-save/{m.name}.pt"
        # Durable: torch.save, then fsync (which waits for S3).
        m.mount()
        os.makedirs(os.path.join(m.mp, "torch-save"), exist_ok=True)
        drop_caches()
        tok = self.start_measure(m)
        out = self.script("save", "file", os.path.join(m.mp, key), str(self.ref.size_mib), "--fsync",
                          "--daemon-pid", str(m.pid()))
        self.end_measure(tok)
        self.check(key, f"{m.name} torch.save + fsync, in S3")
        self.durable(m.name, out)
        gib = GiB / out["bytes"]
        self.sample("daemon CPU s per GiB until durable", "s", "lower", m.name, out["daemon_cpu"] * gib)
        self.sample("daemon CPU s per GiB while torch.save writes", "s", "lower", m.name,
                    out["daemon_cpu_written"] * gib)
        self.sample("writer CPU s per GiB until durable", "s", "lower", m.name, out["cpu"] * gib)
        # close(): torch.save and close without fsync (on local disk, journaled), then `ckptfs flush`.
        m.unmount()
        m.fresh()
        m.mount()
        os.makedirs(os.path.join(m.mp, "torch-save"), exist_ok=True)
        drop_caches()
        tok = self.start_measure(m)
        out = self.script("save", "file", os.path.join(m.mp, key), str(self.ref.size_mib),
                          "--daemon-pid", str(m.pid()))
        flush = sh([m.bin, "flush", m.mp, "--timeout", "600"], check=False, timeout=700)
        self.end_measure(tok)
        expect(flush.returncode == 0, f"ckptfs flush after torch.save: {flush.stderr}")
        self.check(key, f"{m.name} torch.save + close, in S3")
        self.sample(f"{self.label} torch.save until close() returns (local: + fsync)", "s", "lower", m.name,
                    out["seconds"])

    @direct("local")
    def local(self, m):
        path = os.path.join(OUT, "torch-save-local.pt")
        drop_caches()
        out = self.script("save", "file", path, str(self.ref.size_mib), "--fsync")
        expect(sha_file(path) == self.ref.sha, "local torch.save")
        os.unlink(path)
        self.sample(f"{self.label} torch.save until close() returns (local: + fsync)", "s", "lower", m.name,
                    out["seconds"])

    @direct("s3torch")
    def s3torch(self, m):
        key = f"torch-save/{m.name}.pt"
        drop_caches()
        out = self.script("save", "s3torch", f"s3://{self.s3.bucket}/{key}", str(self.ref.size_mib))
        self.check(key, "s3torch S3Checkpoint writer, in S3")
        self.durable(m.name, out)

    @direct("s5cmd")
    def s5cmd(self, m):
        key = f"torch-save/{m.name}.pt"
        staging = os.path.join(OUT, "torch-save-s5cmd.pt")
        drop_caches()
        out = self.script("save", "s5cmd", f"s3://{self.s3.bucket}/{key}", str(self.ref.size_mib),
                          "--staging", staging)
        os.unlink(staging)
        self.check(key, "torch.save + s5cmd cp, in S3")
        self.durable(m.name, out)
