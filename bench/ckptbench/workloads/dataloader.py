"""dataloader: a training job's first epoch without a preload: a PyTorch DataLoader (4 worker processes, batches
of 32) over 2,000 x 128 KiB objects (500 with --quick), through a fresh ckptfs mount with an empty cache (a map
dataset that lists the directory and opens each file) against the S3 Connector for PyTorch's S3MapDataset on the
same objects. Each pass runs bench/dataloader_epoch.py in BENCH_TORCH_PYTHON; every file's sha256 is checked.
Figures in MB/s, from building the dataset (the listing) to the last batch."""
import hashlib
import json
import os
import random
import shutil

from ..common import OUT, ROOT, expect, log, sh
from ..systems.s3torch import TORCH_PYTHON
from . import Workload, direct

KiB = 1 << 10
SCRIPT = os.path.join(ROOT, "bench", "dataloader_epoch.py")


class DataLoader(Workload):
    name = "dataloader"
    order = 75
    summary = "PyTorch DataLoader (4 workers) first pass over 2,000 x 128 KiB: ckptfs mount vs s3torchconnector"
    latency = True

    def __init__(self, run):
        super().__init__(run)
        self.files = 500 if self.quick else 2000
        self.size = 128 * KiB

    def sizes(self):
        return {"dataloader_files": self.files}

    def prepare(self):
        src = os.path.join(OUT, "dataloader-src")
        shutil.rmtree(src, ignore_errors=True)
        os.makedirs(src)
        rng = random.Random("dataloader")
        self.sha = {}
        for i in range(self.files):
            b = rng.randbytes(self.size)
            name = f"img-{i:05d}.jpg"
            with open(os.path.join(src, name), "wb") as f:
                f.write(b)
            self.sha[name] = hashlib.sha256(b).hexdigest()
        self.s3.s5cmd("cp", f"{src}/*", f"s3://{self.s3.bucket}/dataloader/", timeout=3600)
        shutil.rmtree(src)

    def start(self):
        log(f"workload dataloader ({self.files:,} x 128 KiB, latency {self.run.latency} ms)")
        return True

    def epoch(self, mode, where, system):
        r = sh([TORCH_PYTHON, SCRIPT, mode, where], env=self.s3.env(), check=False, timeout=3600)
        expect(r.returncode == 0, f"dataloader pass ({system}): {r.stderr[-2000:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        expect(out["sha"] == self.sha, f"dataloader pass ({system}) read every file right")
        self.record(f"DataLoader first pass {self.files:,} x 128 KiB", "MB/s", "higher", system,
                    out["bytes"] / out["seconds"] / 1e6)

    def through_mount(self, m):
        if m.name != "ckptfs":
            return
        m.fresh()
        m.mount()
        tok = self.start_measure(m)
        self.epoch("mount", os.path.join(m.mp, "dataloader"), m.name)
        self.end_measure(tok)

    @direct("s3torch")
    def s3torch(self, m):
        self.epoch("s3", f"s3://{self.s3.bucket}/dataloader/", m.name)
