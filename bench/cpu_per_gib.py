#!/usr/bin/env python3
"""Daemon CPU seconds per GiB for a checkpoint save until durable, and for a cold sequential read.

    bench/cpu_per_gib.py --rounds 3 --size-mib 1024 [--bin A --bin B ...] [--perf DIR]

For each round and each binary (alternating, so load drifts hit both): a fresh mount with an empty cache;
(a) save: write SIZE bytes with 4 MiB write() calls (torch.save's shape), close(), then `ckptfs flush` until
the file is durable in S3; (b) unmount, empty the cache, mount again, drop the kernel's caches, and read the
file front to back with 1 MiB reads (a cold sequential read; every round checks the bytes by sha256).
Reported: the daemon's utime+stime (/proc/PID/stat, all threads) per GiB for each phase, the writer's own
CPU per GiB, and wall times. CPU time is what to compare: it barely depends on what else the machine runs,
wall time does. With --perf DIR, `perf record -g -e cpu-clock` follows the daemon in each phase and writes
DIR/binI-rN-save.data and DIR/binI-rN-read.data (binI: the I-th --bin, rN: the round).
"""
import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckptbench.common import CKPTFS_BIN, drop_caches  # noqa: E402
from ckptbench.server import start_seaweed, stop_seaweed  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def cpu_seconds(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Mount:
    def __init__(self, binary, mp, cache, env, extra):
        shutil.rmtree(cache, ignore_errors=True)
        r = subprocess.run([binary, "mount", "s3://cpubench", mp, "--cache-dir", cache, *extra],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"cpu_per_gib: mount failed: {r.stderr}")
        self.binary, self.mp, self.cache = binary, mp, cache
        self.pid = int(subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True,
                                      text=True).stdout.split()[0])

    def unmount(self, keep_log=None):
        subprocess.run([self.binary, "unmount", self.mp], capture_output=True)
        while subprocess.run(["mountpoint", "-q", self.mp]).returncode == 0:
            time.sleep(0.1)
        if keep_log and os.path.exists(os.path.join(self.cache, "ckptfs.log")):
            shutil.copy(os.path.join(self.cache, "ckptfs.log"), keep_log)


def perf_start(pid, path):
    if not path:
        return None
    return subprocess.Popen(["perf", "record", "-q", "-g", "-e", "cpu-clock", "-p", str(pid), "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_stop(p):
    if p:
        p.send_signal(2)
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--bin", action="append", default=None, help="ckptfs binaries to compare (default: the release build)")
    ap.add_argument("--mount-args", default="", help="extra mount arguments")
    ap.add_argument("--out", default="/tmp/cpu-per-gib")
    ap.add_argument("--perf", default=None, help="directory for perf.data files (every round)")
    args = ap.parse_args()
    bins = args.bin or [CKPTFS_BIN]
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    if args.perf:
        os.makedirs(args.perf, exist_ok=True)
    info, env = start_seaweed(args.out, "cpubench", "cpu_per_gib")
    mp = os.path.join(args.out, "mnt")
    os.makedirs(mp)
    cache = os.path.join(args.out, "cache")
    size = args.size_mib * MiB
    pattern = os.urandom(64 * MiB)
    want = hashlib.sha256()
    for off in range(0, size, 4 * MiB):
        p = off % len(pattern)
        want.update(pattern[p:p + min(4 * MiB, size - off)])
    want = want.hexdigest()
    rows = []
    try:
        for rnd in range(args.rounds):
            for i, binary in enumerate(bins):
                name = f"bin{i}"
                extra = args.mount_args.split()
                # (a) save until durable
                m = Mount(binary, mp, cache, env, extra)
                path = os.path.join(mp, f"{name}-r{rnd}.bin")
                pf = perf_start(m.pid, args.perf and os.path.join(args.perf, f"{name}-r{rnd}-save.data"))
                time.sleep(0.5 if pf else 0)
                d0, w0, t0 = cpu_seconds(m.pid), self_cpu(), time.perf_counter()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                view = memoryview(pattern)
                for off in range(0, size, 4 * MiB):
                    p = off % len(pattern)
                    os.write(fd, view[p:p + min(4 * MiB, size - off)])
                os.close(fd)
                t_close = time.perf_counter() - t0
                w1 = self_cpu()
                f = subprocess.run([binary, "flush", mp, "--timeout", "600"], capture_output=True, text=True)
                if f.returncode != 0:
                    raise SystemExit(f"cpu_per_gib: flush failed: {f.stderr}")
                t_durable = time.perf_counter() - t0
                d1 = cpu_seconds(m.pid)
                perf_stop(pf)
                m.unmount(keep_log=os.path.join(args.out, f"{name}-r{rnd}-save.log"))
                # (b) cold read
                m = Mount(binary, mp, cache, env, extra)
                drop_caches(required=True)
                time.sleep(2)
                pf = perf_start(m.pid, args.perf and os.path.join(args.perf, f"{name}-r{rnd}-read.data"))
                time.sleep(0.5 if pf else 0)
                h = hashlib.sha256()
                buf = bytearray(MiB)
                r0, t0 = cpu_seconds(m.pid), time.perf_counter()
                with open(path, "rb", buffering=0) as fh:
                    while True:
                        n = fh.readinto(buf)
                        if not n:
                            break
                        if h:
                            h.update(memoryview(buf)[:n])
                t_read = time.perf_counter() - t0
                r1 = cpu_seconds(m.pid)
                perf_stop(pf)
                os.unlink(path)
                m.unmount(keep_log=os.path.join(args.out, f"{name}-r{rnd}-read.log"))
                if h and h.hexdigest() != want:
                    raise SystemExit(f"cpu_per_gib: {binary} read back wrong bytes")
                row = dict(round=rnd, bin=binary, save_daemon=(d1 - d0) * GiB / size, save_writer=(w1 - w0) * GiB / size,
                           close_s=t_close, durable_s=t_durable, read_daemon=(r1 - r0) * GiB / size, read_s=t_read)
                rows.append(row)
                print(f"round {rnd} {binary}: save daemon {row['save_daemon']:.2f} s/GiB, writer {row['save_writer']:.2f}, "
                      f"close {t_close:.1f} s, durable {t_durable:.1f} s; cold read daemon {row['read_daemon']:.2f} s/GiB, "
                      f"{size / t_read / 1e6:.0f} MB/s", flush=True)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        stop_seaweed(args.out)
        # The server's data (every round's object, deleted but not reclaimed) would fill a small disk.
        shutil.rmtree(os.path.join(args.out, "seaweed"), ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    print("\nmedians over rounds (CPU s per GiB):")
    print("| binary | save: daemon | save: writer | cold read: daemon | durable s | read MB/s |")
    print("|---|---|---|---|---|---|")
    for binary in bins:
        rs = [r for r in rows if r["bin"] == binary]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"| {binary} | {med('save_daemon'):.2f} | {med('save_writer'):.2f} | {med('read_daemon'):.2f} | "
              f"{med('durable_s'):.1f} | {size / med('read_s') / 1e6:.0f} |")


if __name__ == "__main__":
    main()
