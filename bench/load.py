#!/usr/bin/env python3
"""Load test (issue 15): unpaced writers and readers through one mount for minutes, the daemon's resources
sampled every second, then every byte that should be in S3 checked by sha256.

    bench/load.py [--minutes 10] [--writers 16] [--readers 16] [--output load]

Setup: a local SeaweedFS on loopback (scripts/seaweed.py, reclaiming overwritten space every 30 s; or the
server at --endpoint-url with --bucket and the usual AWS_* credentials); a dataset for the readers
(--dataset-mib, 8 MiB shards); and a cache disk of its own: an ext4 image of --cache-disk-size, loop-mounted
under the work directory, so the daemon runs with its defaults (block cache and dirty bound each half the
free space) on a disk whose free space means something, and the machine's own disk never fills.

Writers (processes) save checkpoint-like files in a directory each, as fast as they can: a size from --sizes
(MiB), written in 1 MiB writes to a temporary name, every 4th one fsynced before close, then renamed over
`ckpt-N.pt`; the oldest beyond the last 3 is deleted (a trainer's rotation). Readers (processes) read random
shards whole in 1 MiB reads and check each against its sha256.

Sampled every second: the daemon's RSS (/proc/PID/status) and open descriptors (/proc/PID/fd);
`ckptfs status --json` (dirty, staged and staging bytes, the dirty bound, writers held back, bytes uploaded);
the cache disk's free space; bytes written and read. After the run: `ckptfs flush`, unmount, then the bucket
must hold exactly the dataset and the last 3 checkpoints of each writer, each byte-exact (boto3, sha256):
a temporary or deleted name left in S3, or a checkpoint missing or different, counts as lost.

Results: RESULTS/NAME.csv (the samples), NAME.json (figures and goals), NAME.md, and NAME.png (needs
matplotlib: python3 -m pip install matplotlib). Goals, exit 1 if one is missed: staged bytes never above
the dirty bound by more than one file per writer (files still open are never held back), descriptors flat
(the last quarter's peak at most 32 above the first quarter's), daemon peak RSS under 256 MiB, 0 errors, 0 lost.

Needs root (the loop mount and FUSE) and a ckptfs binary (default: the release build).
"""
import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time

from ckptbench.common import CKPTFS_BIN, RESULTS, ROOT, is_mounted
from ckptbench.server import SEAWEED, start_seaweed, stop_seaweed

MiB = 1 << 20
KEEP = 3  # checkpoints each writer keeps
SHARD = 8 * MiB
RSS_GOAL_MIB = 256
# How much the daemon's descriptors may grow from the load's first quarter to its last without counting as a
# leak: its HTTP connection pool grows with demand up to its bound, which includes 64 connections kept for a
# preload (MountDaemon: config.http.maxConnections += Preload.maxParallel). CI saw 78 -> 146 once with the debug
# build under load (50-96 in 4 other runs). The leak this guards against (2 descriptors per fsynced file,
# issue 15) grew by hundreds within the first minute.
FD_SLACK = 32 + 64
# Per worker, in the shared counters: bytes, operations, errors.
FIELDS = 3


def log(*a):
    print(*a, flush=True, file=sys.stderr)


def size_arg(text):
    """A size like 6GiB, 512MiB or a number of bytes."""
    units = {"gib": 1 << 30, "mib": 1 << 20, "kib": 1 << 10, "g": 1 << 30, "m": 1 << 20, "k": 1 << 10}
    t = text.strip().lower()
    for u, m in units.items():
        if t.endswith(u):
            return int(float(t[:-len(u)]) * m)
    return int(t)


# Workers (forked processes)

def writer(i, mp, deadline, stop, sizes, counters, results):
    rng = random.Random(1000 + i)
    d = os.path.join(mp, f"w{i:02d}")
    os.makedirs(d, exist_ok=True)
    pool = os.urandom(max(sizes) + 16 * MiB)
    kept, deleted, errors, latencies = [], [], [], []
    n = 0
    base = i * FIELDS
    while time.monotonic() < deadline and not stop.value:
        size = rng.choice(sizes)
        off = rng.randrange(0, len(pool) - size)
        header = f"writer {i:02d} save {n:08d}\n".encode()
        name, tmp = f"ckpt-{n:06d}.pt", f".ckpt-{n:06d}.pt.tmp"
        h = hashlib.sha256()
        t0 = time.monotonic()
        step = "open"
        try:
            fd = os.open(os.path.join(d, tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                step = "write"
                for at in range(0, size, MiB):
                    chunk = memoryview(pool)[off + at:off + min(size, at + MiB)]
                    if at == 0:
                        chunk = header + bytes(chunk[len(header):])
                    h.update(chunk)
                    os.write(fd, chunk)
                if n % 4 == 3:
                    step = "fsync"
                    os.fsync(fd)
            finally:
                step = "close" if step != "open" else step
                os.close(fd)
            step = "rename"
            os.rename(os.path.join(d, tmp), os.path.join(d, name))
            kept.append([f"w{i:02d}/{name}", h.hexdigest()])
            latencies.append(time.monotonic() - t0)
            counters[base] += size
            counters[base + 1] += 1
            if len(kept) > KEEP:
                step = "unlink"
                old = kept.pop(0)
                os.unlink(os.path.join(mp, old[0]))
                deleted.append(old[0])
        except OSError as e:
            errors.append(f"{step} {name}: {e.strerror} (errno {e.errno})")
            counters[base + 2] += 1
            try:
                os.unlink(os.path.join(d, tmp))
            except OSError:
                pass
        n += 1
    results.put({"writer": i, "kept": kept, "deleted": deleted, "errors": errors, "latencies": latencies})


def reader(i, slot, mp, deadline, stop, shards, counters, results):
    rng = random.Random(2000 + i)
    buf = bytearray(MiB)
    errors = []
    base = slot * FIELDS
    while time.monotonic() < deadline and not stop.value:
        key, want = rng.choice(shards)
        h = hashlib.sha256()
        try:
            with open(os.path.join(mp, key), "rb", buffering=0) as f:
                while True:
                    got = f.readinto(buf)
                    if not got:
                        break
                    h.update(memoryview(buf)[:got])
                    counters[base] += got
            if h.hexdigest() != want:
                errors.append(f"read {key}: sha256 differs")
                counters[base + 2] += 1
            else:
                counters[base + 1] += 1
        except OSError as e:
            errors.append(f"read {key}: {e.strerror} (errno {e.errno})")
            counters[base + 2] += 1
    results.put({"reader": i, "errors": errors})


# The daemon, sampled

class Sampler(threading.Thread):
    """Samples the daemon every second until stopped; `rows` are dicts of the CSV columns."""

    COLUMNS = ["t", "phase", "status_seconds", "rss_mib", "rss_anon_mib", "threads", "fds", "cpu_seconds", "dirty_bytes", "staged_bytes", "staging_bytes", "max_dirty",
               "held_writers", "uploaded_bytes", "cache_used_bytes", "disk_free_bytes", "written_bytes",
               "read_bytes", "saves", "reads", "errors"]

    def __init__(self, binary, mp, pid, disk, counters, writers, env, guard, vacuum):
        super().__init__(daemon=True)
        self.guard, self.vacuum_dir = guard, vacuum
        self.aborted = None
        self.vacuum = None
        self.vacuumed = time.monotonic()
        self.binary, self.mp, self.pid, self.disk, self.counters, self.writers = binary, mp, pid, disk, counters, writers
        self.env = env
        self.rows = []
        self.phase = "load"
        self.t0 = time.monotonic()
        self.stopping = threading.Event()
        self.failures = 0

    def run(self):
        k = 0
        while not self.stopping.is_set():
            self.sample()
            self.protect_the_machine()
            k = max(k + 1, int(time.monotonic() - self.t0))
            self.stopping.wait(max(0, self.t0 + k - time.monotonic()))  # the sampling period, a clock

    def sample(self):
        row = {"t": round(time.monotonic() - self.t0, 2), "phase": self.phase}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                vm = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("Vm", "Rss", "Threads"))}
            row["rss_mib"] = round(vm["VmRSS"] / 1024, 1)
            row["rss_anon_mib"] = round(vm["RssAnon"] / 1024, 1)
            row["threads"] = vm["Threads"]
            row["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            row["cpu_seconds"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
        except (OSError, KeyError):
            return  # the daemon has exited (after the unmount)
        t0 = time.monotonic()
        st = self.status()
        row["status_seconds"] = round(time.monotonic() - t0, 3)
        if st is not None:
            wb = st["writeBack"]
            row.update(dirty_bytes=wb["dirtyBytes"], staged_bytes=wb["stagedBytes"], staging_bytes=wb["stagingBytes"],
                       max_dirty=wb["maxDirty"], held_writers=wb["heldWriters"], uploaded_bytes=wb["uploadedBytes"],
                       cache_used_bytes=st["cacheUsedBytes"])
        st = os.statvfs(self.disk)
        row["disk_free_bytes"] = st.f_bavail * st.f_frsize
        c = list(self.counters)
        w = self.writers * FIELDS
        row["written_bytes"] = sum(c[0:w:FIELDS])
        row["saves"] = sum(c[1:w:FIELDS])
        row["read_bytes"] = sum(c[w::FIELDS])
        row["reads"] = sum(c[w + 1::FIELDS])
        row["errors"] = sum(c[2::FIELDS])
        self.rows.append(row)

    def protect_the_machine(self):
        """Stops the load if the disk holding the work directory (the cache disk's image, the server's data)
        gets low, and has the server reclaim overwritten space every 30 s (when this script started it)."""
        path, min_free, stop = self.guard
        st = os.statvfs(path)
        if st.f_bavail * st.f_frsize < min_free and not stop.value:
            self.aborted = f"stopped early: less than {min_free >> 30} GiB left on the disk of {path}"
            log("load: " + self.aborted)
            stop.value = 1
        if self.vacuum_dir and (self.vacuum is None or self.vacuum.poll() is not None) and \
                time.monotonic() - self.vacuumed > 30:
            self.vacuumed = time.monotonic()
            self.vacuum = subprocess.Popen([sys.executable, SEAWEED, "vacuum", "--dir", self.vacuum_dir],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self):
        """`ckptfs status --json` of the mount, asked over its control socket (README, "The control socket"):
        starting the command line every second would cost the loaded machine more than the answer."""
        import socket
        path = "/run/ckptfs/" + hashlib.sha256(os.path.realpath(self.mp).encode()).hexdigest()[:20] + ".sock"
        try:
            if not os.path.exists(path):
                r = subprocess.run([self.binary, "status", self.mp, "--json"], capture_output=True, text=True,
                                   env=self.env, timeout=30)
                return json.loads(r.stdout) if r.returncode == 0 else None
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(30)
                c.connect(path)
                c.sendall(b'{"cmd":"status"}\n')
                data = b""
                while not data.endswith(b"\n"):
                    chunk = c.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.failures += 1
            return None

    def stop(self):
        self.stopping.set()
        self.join()
        if self.vacuum is not None:
            self.vacuum.wait()


# Setup

class CacheDisk:
    """An ext4 image of `size` bytes loop-mounted at `path` (removed by `remove`)."""

    def __init__(self, work, size):
        self.image = os.path.join(work, "cache-disk.img")
        self.path = os.path.join(work, "cache-disk")
        os.makedirs(self.path, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", self.image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.path], check=True)

    def remove(self):
        subprocess.run(["umount", self.path], capture_output=True)
        if is_mounted(self.path):
            subprocess.run(["umount", "-l", self.path], capture_output=True)
        os.unlink(self.image)


def put_dataset(s3, bucket, total):
    """Random 8 MiB shards under data/; returns [(key, sha256)]."""
    from concurrent.futures import ThreadPoolExecutor

    def put(k):
        body = os.urandom(SHARD)
        key = f"data/shard-{k:05d}.bin"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        return key, hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(put, range(max(1, total // SHARD))))


def s3_sha(s3, bucket, key):
    h = hashlib.sha256()
    for b in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MiB):
        h.update(b)
    return h.hexdigest()


# Results

def goals(res):
    """Each goal: (name, met, what was measured)."""
    out = []
    allowance = res["writers"] * max(res["sizes_mib"]) * MiB
    out.append(("staged bytes within the dirty bound (+ one open file per writer)",
                res["max_staged_bytes"] <= res["max_dirty"] + allowance,
                f"peak {res['max_staged_bytes'] / MiB:.0f} MiB, bound {res['max_dirty'] / MiB:.0f} MiB"))
    out.append(("descriptors flat", res["fds_last_quarter_max"] <= res["fds_first_quarter_max"] + FD_SLACK,
                f"{res['fds_min']}-{res['fds_max']}; first quarter's peak {res['fds_first_quarter_max']}, "
                f"last quarter's {res['fds_last_quarter_max']}"))
    out.append((f"peak RSS < {RSS_GOAL_MIB} MiB", res["peak_rss_mib"] < RSS_GOAL_MIB, f"{res['peak_rss_mib']:.0f} MiB"))
    out.append(("0 errors", res["errors"] == 0, str(res["errors"])))
    out.append(("0 lost", res["lost"] == 0, f"{res['lost']} ({res['checked_objects']} objects, "
                                             f"{res['checked_bytes'] / MiB:,.0f} MiB checked)"))
    return out


def plot(rows, res, path):
    """Five panels over time: RSS, descriptors, dirty and staged bytes against the bound, cache disk free
    space, and the write/read rates. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if "dirty_bytes" in r]
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(5, 1, figsize=(8, 10), sharex=True)
    ax[0].plot(t, [r["rss_mib"] for r in rows], color="#1f77b4")
    ax[0].axhline(RSS_GOAL_MIB, color="red", ls="--", lw=1, label=f"goal {RSS_GOAL_MIB} MiB")
    ax[0].set_ylabel("RSS MiB")
    ax[0].set_ylim(0, RSS_GOAL_MIB * 1.1)
    ax[0].legend(loc="lower right", fontsize=8)
    ax[1].plot(t, [r["fds"] for r in rows], color="#2ca02c")
    ax[1].set_ylabel("open fds")
    ax[1].set_ylim(0, max(r["fds"] for r in rows) * 1.3)
    gib = 1 << 30
    ax[2].plot(t, [r["dirty_bytes"] / gib for r in rows], label="dirty", color="#ff7f0e")
    ax[2].plot(t, [r["staged_bytes"] / gib for r in rows], label="staged", color="#9467bd", lw=0.8)
    ax[2].axhline(res["max_dirty"] / gib, color="red", ls="--", lw=1, label="bound (--max-dirty)")
    ax[2].set_ylabel("GiB")
    ax[2].legend(loc="lower right", fontsize=8)
    ax[3].plot(t, [r["disk_free_bytes"] / gib for r in rows], color="#8c564b")
    ax[3].set_ylabel("cache disk free GiB")
    ax[3].set_ylim(0, res["cache_disk_bytes"] / gib)
    rate_t, wr, rd = [], [], []
    for a, b in zip(rows, rows[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            rate_t.append(b["t"])
            wr.append((b["written_bytes"] - a["written_bytes"]) / dt / 1e6)
            rd.append((b["read_bytes"] - a["read_bytes"]) / dt / 1e6)
    ax[4].plot(rate_t, wr, label="saved (acknowledged)", color="#d62728", lw=0.8)
    ax[4].plot(rate_t, rd, label="read", color="#17becf", lw=0.8)
    ax[4].set_ylabel("MB/s")
    ax[4].set_xlabel("seconds (load until the dashed line, then flush and unmount)")
    ax[4].legend(loc="upper right", fontsize=8)
    for a in ax:
        a.axvline(res["load_seconds"], color="gray", ls=":", lw=1)
    fig.suptitle(f"ckptfs under load: {res['writers']} writers + {res['readers']} readers, "
                 f"{res['load_seconds'] / 60:.0f} min", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="how long the load runs (default 10)")
    ap.add_argument("--seconds", type=float, help="the same in seconds (overrides --minutes)")
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--sizes", default="1,4,16,40", help="checkpoint sizes in MiB, one picked at random per save")
    ap.add_argument("--dataset-mib", type=int, default=1024, help="what the readers read (8 MiB shards)")
    ap.add_argument("--cache-disk-size", type=size_arg, default="6GiB", help="the loop-mounted cache disk")
    ap.add_argument("--bin", default=CKPTFS_BIN, help="the ckptfs binary (default: the release build)")
    ap.add_argument("--endpoint-url", help="an S3 server to use instead of starting SeaweedFS (credentials from AWS_*)")
    ap.add_argument("--bucket", default="load", help="bucket (with --endpoint-url: must exist and be empty)")
    ap.add_argument("--work-dir", default=os.path.join(ROOT, "bench", "out", "load"))
    ap.add_argument("--results-dir", default=RESULTS)
    ap.add_argument("--output", default="load", help="name of the result files")
    ap.add_argument("--mount-option", action="append", default=[], help="extra `ckptfs mount` argument (repeatable)")
    ap.add_argument("--min-free", type=size_arg, default="4GiB",
                    help="stop the load (and fail) if the disk of --work-dir gets this low (default 4GiB)")
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = args.minutes * 60
    sizes = [int(s) * MiB for s in args.sizes.split(",")]
    if not os.path.exists(args.bin):
        raise SystemExit(f"load: no ckptfs binary at {args.bin}: swift build -c release --product ckptfs")
    if os.geteuid() != 0:
        raise SystemExit("load: run as root (the cache disk is a loop mount)")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    os.makedirs(args.results_dir, exist_ok=True)

    import boto3
    from botocore.config import Config
    started = args.endpoint_url is None
    if started:
        info, env = start_seaweed(args.work_dir, args.bucket, "load")
        endpoint, access, secret = info["endpoint"], info["access_key"], info["secret_key"]
    else:
        endpoint, access, secret = args.endpoint_url, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                      region_name=os.environ.get("AWS_REGION", "us-east-1"),
                      config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
    disk = mp = None
    pid = None
    sampler = None
    try:
        log(f"load: putting {args.dataset_mib} MiB of shards for the readers")
        shards = put_dataset(s3, args.bucket, args.dataset_mib * MiB)
        disk = CacheDisk(args.work_dir, args.cache_disk_size)
        mp = os.path.join(args.work_dir, "mnt")
        os.makedirs(mp)
        r = subprocess.run([args.bin, "mount", f"s3://{args.bucket}", mp, "--cache-dir", os.path.join(disk.path, "cache"),
                            *args.mount_option], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"load: mount failed: {r.stderr}")
        pid = int(subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True,
                                 text=True).stdout.split()[0])
        ctx = multiprocessing.get_context("fork")
        counters = ctx.Array("q", (args.writers + args.readers) * FIELDS, lock=False)
        results = ctx.Queue()
        deadline = time.monotonic() + args.seconds
        stop = ctx.Value("b", 0, lock=False)
        procs = [ctx.Process(target=writer, args=(i, mp, deadline, stop, sizes, counters, results)) for i in range(args.writers)]
        procs += [ctx.Process(target=reader, args=(i, args.writers + i, mp, deadline, stop, shards, counters, results))
                  for i in range(args.readers)]
        sampler = Sampler(args.bin, mp, pid, disk.path, counters, args.writers, env, guard=(args.work_dir, args.min_free, stop),
                          vacuum=os.path.join(args.work_dir, "seaweed") if started else None)
        log(f"load: {args.writers} writers and {args.readers} readers for {args.seconds:.0f} s")
        # Workers are forked before the sampler runs: a worker forked while the sampler's `ckptfs status` is being
        # started would hold that child's pipe open, and the sample would wait for the worker to exit.
        for p in procs:
            p.start()
        sampler.start()
        got, wedged = [], []
        for _ in procs:
            try:
                got.append(results.get(timeout=max(1, deadline - time.monotonic()) + 600))
            except queue.Empty:  # a worker stuck 10 minutes past the end: the mount is wedged
                break
        for p in procs:
            p.join(10)
            if p.is_alive():
                wedged.append(p.pid)
                p.kill()
        load_seconds = time.monotonic() - sampler.t0
        sampler.phase = "flush"
        t0 = time.monotonic()
        r = subprocess.run([args.bin, "flush", mp, "--timeout", "900"], env=env, capture_output=True, text=True, timeout=1000)
        flush_seconds = time.monotonic() - t0
        flush_error = r.stderr.strip() if r.returncode != 0 else None
        sampler.phase = "unmount"
        r = subprocess.run([args.bin, "unmount", mp], env=env, capture_output=True, text=True, timeout=1000)
        unmount_error = r.stderr.strip() if r.returncode != 0 else None
        sampler.stop()
        peak_rss = max(x["rss_mib"] for x in sampler.rows)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if mp and is_mounted(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        if pid:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        if disk:
            disk.remove()
        if started and sys.exc_info()[0] is not None:
            stop_seaweed(args.work_dir)

    log("load: checking the bucket")
    writers = [g for g in got if "writer" in g]
    readers = [g for g in got if "reader" in g]
    expect = dict(shards)
    for w in writers:
        expect.update(dict(w["kept"]))
    markers = {f"w{i:02d}/" for i in range(args.writers)} | {"data/"}  # mkdir's directory markers
    listed = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
        listed |= {o["Key"] for o in page.get("Contents", [])}
    lost = sorted(set(expect) - listed)
    extra = sorted(listed - set(expect) - markers)
    checked_bytes = 0
    for key in sorted(set(expect) & listed):
        if s3_sha(s3, args.bucket, key) != expect[key]:
            lost.append(key)
    sizes_of = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
        sizes_of.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    checked_bytes = sum(sizes_of.get(k, 0) for k in expect)
    if started:
        stop_seaweed(args.work_dir)

    rows = sampler.rows
    load_rows = [x for x in rows if x["phase"] == "load" and "fds" in x]
    q = max(1, len(load_rows) // 4)
    errors = [e for g in got for e in g["errors"]]
    errors += [f"a worker (pid {p}) never finished: the mount was wedged" for p in wedged]
    if sampler.aborted:
        errors.append(sampler.aborted)
    if flush_error:
        errors.append("flush: " + flush_error)
    if unmount_error:
        errors.append("unmount: " + unmount_error)
    latencies = sorted(x for w in writers for x in w["latencies"])
    last = rows[-1] if rows else {}
    full = [x for x in rows if "dirty_bytes" in x]
    res = {
        "command": "bench/load.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "binary": args.bin,
        "writers": args.writers, "readers": args.readers,
        "sizes_mib": [s // MiB for s in sizes],
        "cache_disk_bytes": args.cache_disk_size,
        "load_seconds": round(load_seconds, 1),
        "flush_seconds": round(flush_seconds, 1),
        "samples": len(rows),
        "max_dirty": max((x["max_dirty"] for x in full), default=0),
        "max_dirty_bytes": max((x["dirty_bytes"] for x in full), default=0),
        "max_staged_bytes": max((x["staged_bytes"] for x in full), default=0),
        "max_staging_bytes": max((x["staging_bytes"] for x in full), default=0),
        "max_held_writers": max((x["held_writers"] for x in full), default=0),
        "seconds_with_writers_held": sum(1 for x in full if x["held_writers"] > 0),
        "peak_rss_mib": peak_rss,
        "daemon_cpu_seconds": round(load_rows[-1]["cpu_seconds"] - load_rows[0]["cpu_seconds"], 1) if load_rows else None,
        "rss_end_of_load_mib": load_rows[-1]["rss_mib"] if load_rows else None,
        "fds_min": min(x["fds"] for x in load_rows), "fds_max": max(x["fds"] for x in load_rows),
        "fds_first_quarter_max": max(x["fds"] for x in load_rows[:q]),
        "fds_last_quarter_max": max(x["fds"] for x in load_rows[-q:]),
        "min_disk_free_bytes": min(x["disk_free_bytes"] for x in rows),
        "saves": sum(len(w["latencies"]) for w in writers),
        "written_bytes": last.get("written_bytes", 0),
        "uploaded_bytes": max((x["uploaded_bytes"] for x in full), default=0),
        "read_bytes": last.get("read_bytes", 0),
        "reads": last.get("reads", 0),
        "save_seconds_p50": latencies[len(latencies) // 2] if latencies else None,
        "save_seconds_p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "save_seconds_max": latencies[-1] if latencies else None,
        "status_failures": sampler.failures,
        "status_seconds_max": max((x["status_seconds"] for x in rows if "status_seconds" in x), default=None),
        "errors": len(errors), "error_samples": errors[:20],
        "lost": len(lost) + len(extra), "lost_keys": lost[:20], "unexpected_keys": extra[:20],
        "checked_objects": len(expect), "checked_bytes": checked_bytes,
    }
    res["goals"] = [{"goal": g, "met": ok, "measured": m} for g, ok, m in goals(res)]

    base = os.path.join(args.results_dir, args.output)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=Sampler.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    plotted = plot(rows, res, base + ".png")
    lines = [f"Command: `{res['command']}` ({res['date']}, {res['cpus']} cores shared with the S3 server and the "
             "load's own processes).", "",
             "| figure | value |", "|---|---|",
             f"| load | {args.writers} unpaced writers ({', '.join(str(s) for s in res['sizes_mib'])} MiB, temp + rename, "
             f"every 4th fsynced, last {KEEP} kept) + {args.readers} readers, {res['load_seconds']:.0f} s |",
             f"| saves / written | {res['saves']:,} / {res['written_bytes'] / 1e9:.1f} GB "
             f"({res['written_bytes'] / 1e6 / max(1, res['load_seconds']):.0f} MB/s); save p50 "
             f"{res['save_seconds_p50'] or 0:.2f} s, p99 {res['save_seconds_p99'] or 0:.2f} s, max {res['save_seconds_max'] or 0:.1f} s |",
             f"| reads / read | {res['reads']:,} / {res['read_bytes'] / 1e9:.1f} GB "
             f"({res['read_bytes'] / 1e6 / max(1, res['load_seconds']):.0f} MB/s) |",
             f"| uploaded | {res['uploaded_bytes'] / 1e9:.1f} GB; flush after the load {res['flush_seconds']:.0f} s |",
             f"| dirty bound (default: half the cache disk's free space) | {res['max_dirty'] / MiB:,.0f} MiB |",
             f"| peak dirty / staged / staging on disk | {res['max_dirty_bytes'] / MiB:,.0f} / "
             f"{res['max_staged_bytes'] / MiB:,.0f} / {res['max_staging_bytes'] / MiB:,.0f} MiB |",
             f"| writers held back by the bound | up to {res['max_held_writers']} at once, in "
             f"{res['seconds_with_writers_held']} of {res['samples']} samples |",
             f"| daemon peak RSS | {res['peak_rss_mib']:.0f} MiB |",
             f"| daemon CPU during the load | {res['daemon_cpu_seconds']:.0f} s "
             f"({100 * res['daemon_cpu_seconds'] / max(1, res['load_seconds']):.0f}% of one core) |",
             f"| daemon open fds | {res['fds_min']}-{res['fds_max']} |",
             f"| cache disk ({args.cache_disk_size / MiB:,.0f} MiB) free, lowest | "
             f"{res['min_disk_free_bytes'] / MiB:,.0f} MiB |",
             f"| errors / lost | {res['errors']} / {res['lost']} ({res['checked_objects']} objects, "
             f"{res['checked_bytes'] / 1e9:.2f} GB checked by sha256) |", "",
             "| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {'yes' if g['met'] else 'NO'} | {g['measured']} |" for g in res["goals"]]
    if not plotted:
        lines += ["", "(no plot: matplotlib is not installed; python3 -m pip install matplotlib)"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(g["met"] for g in res["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
