"""What the PyTorch checkpoint workloads (torch-save, torch-load, dcp) share: each operation is one run of
bench/torch_ckpt.py in BENCH_TORCH_PYTHON (its state dict is made before its clock starts), every system is
measured in each of ROUNDS rounds with the systems' order rotating from round to round, and each figure is
the median of its rounds (the rounds are kept in the JSON). The checkpoint torch-save writes and torch-load
reads is made once per run (`Reference`)."""
import json
import os
import statistics

from ..common import CKPTFS_BIN, SUBJECT, MiB, OUT, ROOT, expect, log, sh, sha_file
from ..systems.s3torch import TORCH_PYTHON
from . import Workload

SCRIPT = os.path.join(ROOT, "bench", "torch_ckpt.py")
ROUNDS = 3
GiB = 1 << 30


def size_label(nbytes):
    return f"{nbytes // GiB} GiB" if nbytes >= GiB and nbytes % GiB == 0 else f"{nbytes // MiB} MiB"


class Reference:
    """The torch.save checkpoint of torch-save and torch-load: the state dict of `size_mib` MiB (float32
    tensors of 64 MiB, seeded) saved to bench/out/torch-ckpt.pt, its sha256 (`sha`: every save must produce
    exactly these bytes), the digest of its tensors (`digest`: every load must give them back) and, once
    `upload`ed, the object s3://BUCKET/torch/ckpt.pt that torch-load reads."""
    key = "torch/ckpt.pt"

    def __init__(self, size_mib):
        self.size_mib = size_mib
        self.path = os.path.join(OUT, "torch-ckpt.pt")
        self.sha = self.digest = None
        self.uploaded = False

    def make(self):
        if self.sha:
            return
        out = script("ref", self.path, str(self.size_mib))
        self.digest, self.bytes = out["digest"], out["bytes"]
        self.sha = sha_file(self.path)
        self.file_bytes = os.path.getsize(self.path)

    def upload(self, s3):
        self.make()
        if not self.uploaded:
            s3.s5cmd("cp", self.path, f"s3://{s3.bucket}/{self.key}")
            expect(s3.sha(self.key) == self.sha, "uploaded torch checkpoint")
            self.uploaded = True

    def cleanup(self):
        if os.path.exists(self.path):
            os.unlink(self.path)

    @staticmethod
    def of(run):
        """The run's one Reference (512 MiB with --quick, else 2 GiB)."""
        if not hasattr(run, "torch_reference"):
            run.torch_reference = Reference(512 if run.quick else 2048)
        return run.torch_reference


def script(*args, env=None, taskset=None):
    """Runs bench/torch_ckpt.py ARGS in BENCH_TORCH_PYTHON (on CPU `taskset` if given) and returns its JSON;
    raises RuntimeError with the end of its stderr if it fails (the runner notes it and goes on)."""
    cmd = ([] if taskset is None else ["taskset", "-c", str(taskset)]) + [TORCH_PYTHON, SCRIPT, *args]
    r = sh(cmd, env=env, check=False, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"torch_ckpt.py {args[0]} {args[1] if len(args) > 1 else ''} failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def torch_available():
    return sh([TORCH_PYTHON, "-c", "import torch"], check=False).returncode == 0


class TorchWorkload(Workload):
    latency = True
    version_commands = {"torch": [TORCH_PYTHON, "-c", "import torch; print('torch', torch.__version__)"]}

    def describe(self):
        """What the start of a pass logs after the workload's name."""
        return ""

    def start(self):
        log(f"workload {self.name} ({self.describe()}, {ROUNDS} rounds, latency {self.run.latency} ms)")
        if not torch_available():
            self.run.notes.append(f"{self.name}: no torch in {TORCH_PYTHON} (BENCH_TORCH_PYTHON), skipped")
            return False
        return True

    def handler(self, m):
        """ckptfs among the mounts (the other mounts are not measured by these workloads), and the direct
        systems with a method."""
        if m.kind == "mount" and m.name != SUBJECT:
            return None
        return super().handler(m)

    def execute(self):
        if self.start() is False:
            return
        self.samples = {}
        systems = [s for s in self.run.systems if self.handler(s) is not None]
        for r in range(ROUNDS):
            k = r % max(1, len(systems))
            order = systems[k:] + systems[:k]
            log(f" round {r + 1}/{ROUNDS}: {', '.join(s.name for s in order)}")
            self.run.each(self.name, self.one, order)
        for (figure, unit, better, system), values in self.samples.items():
            self.run.record(self.name, figure, unit, better, system, statistics.median(values), rounds=values)

    def sample(self, figure, unit, better, system, value):
        """One round's value of a figure; the figure recorded at the end is the median of the rounds."""
        self.samples.setdefault((figure, unit, better, system), []).append(value)
        log(f"  {system:7s} {figure}: {value:.3f} {unit}")

    def script(self, *args, taskset=None):
        return script(*args, env=self.s3.env(), taskset=taskset)

    def cleanup(self):
        """The reference checkpoint's local file, if this workload uses it."""
        ref = getattr(self, "ref", None)
        if ref:
            ref.cleanup()

    @staticmethod
    def ckptfs_bin():
        return CKPTFS_BIN
