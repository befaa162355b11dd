"""preload: `ckptfs preload` of a prefix into a fresh mount's empty cache against `s5cmd cp` of the same prefix
to local disk, for 10,000 x 128 KiB and for 4 x 1 GiB (1,000 x 128 KiB and 4 x 64 MiB with --quick); then an
epoch (every file read once by 8 readers, kernel caches dropped first) through the mount against reading the
local copy. Figures in MB/s; the epoch through the mount must send no GET (`ckptfs status`), and every file read
must match by sha256. s5cmd's copy is timed without a sync (its files are in the page cache when it returns;
ckptfs's blocks are written to disk with O_DIRECT), which favours s5cmd."""
import concurrent.futures as cf
import hashlib
import json
import os
import random
import shutil
import time

from ..common import OUT, drop_caches, expect, log, sh
from . import Workload, direct

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class Preload(Workload):
    name = "preload"
    order = 70
    summary = "ckptfs preload of 10,000 x 128 KiB and of 4 x 1 GiB vs s5cmd cp to local disk; then an epoch from each"
    latency = True

    def __init__(self, run):
        super().__init__(run)
        # (name, files, bytes each)
        self.sets = [("small", 1000 if self.quick else 10000, 128 * KiB), ("large", 4, 64 * MiB if self.quick else GiB)]

    def sizes(self):
        return {"preload_small_files": self.sets[0][1], "preload_large_bytes": self.sets[1][2]}

    @staticmethod
    def label(files, size):
        unit = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"
        return f"{files:,} x {unit}"

    def prepare(self):
        """preload/small/fNNNNN.bin and preload/large/fN.bin, written locally, uploaded with s5cmd, and their
        sha256 kept for the checks."""
        self.sha = {}
        for name, n, size in self.sets:
            src = os.path.join(OUT, f"preload-src-{name}")
            shutil.rmtree(src, ignore_errors=True)
            os.makedirs(src)
            rng = random.Random(name)
            digests = {}
            for i in range(n):
                path = os.path.join(src, f"f{i:05d}.bin")
                h = hashlib.sha256()
                with open(path, "wb") as f:
                    left = size
                    while left:
                        b = rng.randbytes(min(left, 16 * MiB))
                        f.write(b)
                        h.update(b)
                        left -= len(b)
                digests[f"f{i:05d}.bin"] = h.hexdigest()
            self.sha[name] = digests
            self.s3.s5cmd("cp", f"{src}/*", f"s3://{self.s3.bucket}/preload/{name}/", timeout=3600)
            shutil.rmtree(src)

    def start(self):
        log(f"workload preload ({', '.join(self.label(n, s) for _, n, s in self.sets)}, latency {self.run.latency} ms)")
        return True

    def epoch(self, directory, name):
        """Seconds for 8 readers to read every file of set `name` under `directory` (checked by sha256)."""
        digests = self.sha[name]

        def one(fname):
            h = hashlib.sha256()
            with open(os.path.join(directory, fname), "rb") as f:
                while True:
                    b = f.read(4 * MiB)
                    if not b:
                        return fname, h.hexdigest()
                    h.update(b)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as ex:
            got = dict(ex.map(one, sorted(digests)))
        dt = time.perf_counter() - t0
        expect(got == digests, f"epoch over preload/{name}")
        return dt

    def through_mount(self, m):
        if m.name != "ckptfs":
            return  # the other mounts have no preload
        for name, n, size in self.sets:
            m.fresh()
            drop_caches()
            m.mount()
            tok = self.start_measure(m)
            t0 = time.perf_counter()
            r = sh([m.bin, "preload", os.path.join(m.mp, "preload", name), "--json"], check=False, timeout=7200)
            dt = time.perf_counter() - t0
            self.end_measure(tok)
            expect(r.returncode == 0, f"ckptfs preload of preload/{name}: {r.stderr}")
            summary = json.loads(r.stdout.strip().splitlines()[-1])
            expect(summary["progress"]["bytesFetched"] == n * size, f"ckptfs preload fetched preload/{name} once")
            self.record(f"preload {self.label(n, size)}", "MB/s", "higher", m.name, n * size / dt / 1e6)
            before = self.status(m)
            drop_caches()
            dt = self.epoch(os.path.join(m.mp, "preload", name), name)
            after = self.status(m)
            expect(after["getRequests"] == before["getRequests"], f"the epoch over preload/{name} after the preload sent GETs")
            log(f"epoch over preload/{name} through the mount: {after['headRequests'] - before['headRequests']} HEAD, "
                f"{after['listRequests'] - before['listRequests']} LIST, 0 GET")
            self.record(f"epoch after preload {self.label(n, size)}", "MB/s", "higher", m.name, n * size / dt / 1e6)

    @staticmethod
    def status(m):
        return json.loads(sh([m.bin, "status", m.mp, "--json"]).stdout)

    @direct("s5cmd")
    def s5cmd(self, m):
        for name, n, size in self.sets:
            local = os.path.join(OUT, f"preload-local-{name}")
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local)
            drop_caches()
            t0 = time.perf_counter()
            self.s3.s5cmd("cp", f"s3://{self.s3.bucket}/preload/{name}/*", local + "/", timeout=7200)
            dt = time.perf_counter() - t0
            self.record(f"preload {self.label(n, size)}", "MB/s", "higher", m.name, n * size / dt / 1e6)
            drop_caches()
            dt = self.epoch(local, name)
            self.record(f"epoch after preload {self.label(n, size)}", "MB/s", "higher", m.name, n * size / dt / 1e6)
            shutil.rmtree(local)
