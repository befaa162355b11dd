"""dcp: torch.distributed.checkpoint with 4 ranks (gloo, 4 processes on this machine) x 256 MiB (64 MiB with
--quick) of float32 tensors, in rounds (medians). Save until in S3: ckptfs with FileSystemWriter on the mount
(its default sync_files=True: every file fsynced, which waits for S3), then `ckptfs flush` of the mount (the
.metadata rename); s3torch with its S3StorageWriter. Then a cold load on 1 CPU: a fresh ckptfs mount with an
empty cache and FileSystemReader against S3StorageReader, the kernel's caches dropped, the loading process
pinned to one CPU (taskset, torch.set_num_threads(1)) and, for ckptfs, the daemon's threads pinned to the
same CPU, so that each client stack has one CPU and the server the other. Every loaded tensor is compared with
the saved one (torch.equal) and the saved keys are listed in S3."""
import os
import subprocess

from ..common import drop_caches, expect
from . import direct
from ._torch import GiB, TorchWorkload

RANKS = 4
LOAD_CPU = 1


class Dcp(TorchWorkload):
    name = "dcp"
    order = 82
    summary = ("torch.distributed.checkpoint, 4 ranks x 256 MiB: save until in S3 (FileSystemWriter on the mount "
               "+ flush vs S3StorageWriter), then a cold load on 1 CPU (FileSystemReader vs S3StorageReader)")

    def __init__(self, run):
        super().__init__(run)
        self.mib_per_rank = 64 if self.quick else 256

    def sizes(self):
        return {"dcp_ranks": RANKS, "dcp_mib_per_rank": self.mib_per_rank}

    def describe(self):
        return f"{RANKS} ranks x {self.mib_per_rank} MiB"

    @property
    def label(self):
        return f"{RANKS} ranks x {self.mib_per_rank} MiB"

    def check_keys(self, prefix, what):
        keys = self.s3.keys(prefix)
        names = sorted(k.rsplit("/", 1)[-1] for k in keys)
        expect(".metadata" in names and sum(n.endswith(".distcp") for n in names) == RANKS,
               f"{what}: keys in S3 {names}")

    def record_save(self, m, out):
        self.sample(f"DCP save {self.label} until in S3", "s", "lower", m.name, out["seconds"])
        self.sample("CPU s per GiB, DCP save (ranks + daemon; peer: its processes)", "s", "lower", m.name,
                    (out["cpu"] + out["daemon_cpu"]) * GiB / out["bytes"])

    def record_load(self, m, out):
        expect(out["equal"], f"{m.name} DCP load: a tensor differs from the saved one")
        self.sample(f"DCP load {self.label} on 1 CPU, cold", "s", "lower", m.name, out["seconds"])
        self.sample("CPU s per GiB, DCP load (loader + daemon; peer: its process)", "s", "lower", m.name,
                    (out["cpu"] + out["daemon_cpu"]) * GiB / out["bytes"])

    def through_mount(self, m):
        prefix = f"dcp/{m.name}"
        where = os.path.join(m.mp, prefix)
        m.mount()
        os.makedirs(where, exist_ok=True)
        drop_caches()
        tok = self.start_measure(m)
        out = self.script("dcp-save", "file", where, str(RANKS), str(self.mib_per_rank), "--flush", m.mp,
                          "--ckptfs", m.bin, "--daemon-pid", str(m.pid()))
        self.end_measure(tok)
        self.check_keys(prefix + "/", f"{m.name} DCP save")
        self.record_save(m, out)
        self.sample("daemon CPU s per GiB, DCP save", "s", "lower", m.name, out["daemon_cpu"] * GiB / out["bytes"])
        # Cold load: a fresh mount, an empty cache, the daemon on the loader's CPU.
        m.unmount()
        m.fresh()
        drop_caches()
        m.mount()
        pid = m.pid()
        subprocess.run(["taskset", "-a", "-p", "-c", str(LOAD_CPU), str(pid)], check=True, capture_output=True)
        tok = self.start_measure(m)
        out = self.script("dcp-load", "file", where, str(RANKS), str(self.mib_per_rank), "--daemon-pid", str(pid),
                          taskset=LOAD_CPU)
        self.end_measure(tok)
        self.record_load(m, out)
        self.sample("daemon CPU s per GiB, DCP load", "s", "lower", m.name, out["daemon_cpu"] * GiB / out["bytes"])
        self.s3.delete_prefix(prefix + "/")

    @direct("s3torch")
    def s3torch(self, m):
        prefix = f"dcp/{m.name}"
        uri = f"s3://{self.s3.bucket}/{prefix}"
        drop_caches()
        out = self.script("dcp-save", "s3torch", uri, str(RANKS), str(self.mib_per_rank))
        self.check_keys(prefix + "/", "s3torch DCP save")
        self.record_save(m, out)
        drop_caches()
        out = self.script("dcp-load", "s3torch", uri, str(RANKS), str(self.mib_per_rank), taskset=LOAD_CPU)
        self.record_load(m, out)
        self.s3.delete_prefix(prefix + "/")
