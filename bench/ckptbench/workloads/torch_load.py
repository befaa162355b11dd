"""torch-load: torch.load of the torch-save checkpoint (2 GiB, 512 MiB with --quick) in rounds (medians).
Cold: a fresh ckptfs mount with an empty cache and the kernel's caches dropped (the server's page cache too)
against the S3 Connector for PyTorch's S3Checkpoint reader (caches dropped). Cached: the same mount unmounted
and mounted again on the same cache directory, kernel caches dropped, against torch.load of a local copy
(`local`, caches dropped: the disk's own speed). CPU per GiB of the cold load: the loader's CPU plus, for
ckptfs, the daemon's. Every load's tensors are checked against the reference's (sha256 of their bytes)."""
import os

from ..common import drop_caches, expect
from . import direct
from ._torch import GiB, Reference, TorchWorkload, size_label, torch_available


class TorchLoad(TorchWorkload):
    name = "torch-load"
    order = 81
    summary = ("torch.load of the 2 GiB checkpoint: cold (fresh mount, empty cache) vs s3torch's S3Checkpoint "
               "reader, and cached (remount, same cache) vs a local copy")

    def __init__(self, run):
        super().__init__(run)
        self.ref = Reference.of(run)

    def describe(self):
        return f"{self.ref.size_mib} MiB checkpoint"

    def prepare(self):
        if torch_available():
            self.ref.upload(self.s3)

    @property
    def label(self):
        return size_label(self.ref.size_mib << 20)

    def load(self, m, system, where, daemon=None):
        args = ["load", system, where, str(self.ref.size_mib)]
        if daemon:
            args += ["--daemon-pid", str(daemon)]
        out = self.script(*args)
        expect(out["digest"] == self.ref.digest, f"{m.name} torch.load ({system} {where})")
        return out

    def cold(self, m, out):
        self.sample(f"{self.label} torch.load, cold", "s", "lower", m.name, out["seconds"])
        self.sample("CPU s per GiB, cold load (loader + daemon; peer: its process)", "s", "lower", m.name,
                    (out["cpu"] + out["daemon_cpu"]) * GiB / out["bytes"])

    def through_mount(self, m):
        path = os.path.join(m.mp, self.ref.key)
        drop_caches()
        m.mount()
        tok = self.start_measure(m)
        out = self.load(m, "file", path, m.pid())
        self.end_measure(tok)
        self.cold(m, out)
        self.sample("daemon CPU s per GiB, cold load", "s", "lower", m.name, out["daemon_cpu"] * GiB / out["bytes"])
        # Cached: unmounted and mounted again on the same cache directory, kernel caches dropped.
        m.unmount()
        m.mount()
        drop_caches()
        tok = self.start_measure(m)
        out = self.load(m, "file", path, m.pid())
        self.end_measure(tok)
        self.sample(f"{self.label} torch.load, cached (ckptfs: remount, same cache; local: a local copy)", "s",
                    "lower", m.name, out["seconds"])
        self.sample("daemon CPU s per GiB, cached load", "s", "lower", m.name, out["daemon_cpu"] * GiB / out["bytes"])

    @direct("local")
    def local(self, m):
        drop_caches()
        out = self.load(m, "file", self.ref.path)
        self.sample(f"{self.label} torch.load, cached (ckptfs: remount, same cache; local: a local copy)", "s",
                    "lower", m.name, out["seconds"])

    @direct("s3torch")
    def s3torch(self, m):
        drop_caches()
        self.cold(m, self.load(m, "s3torch", f"s3://{self.s3.bucket}/{self.ref.key}"))
