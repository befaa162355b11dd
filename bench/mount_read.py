#!/usr/bin/env python3
"""Reading through the mount vs direct S3 access, same server, same run.

    bench/mount_read.py [--size-mib 1024] [--rounds 3] [--no-build]

Starts a local SeaweedFS, uploads a random object, then per round (each timed read is a plain
sequential read with 1 MiB buffers; its sha256 is checked in a separate, untimed pass):
  - cold read through ckptfs: fresh cache dir, kernel caches dropped, `cat FILE > /dev/null` equivalent
  - s5cmd cp of the same object to local disk (direct S3)
  - warm read through ckptfs: same cache, kernel caches dropped (served from the block cache)
  - a local file of the same size, kernel caches dropped (the disk's speed)
then 4 KiB random reads with fio over the mounted file, cold (fresh cache) and cached, and the daemon's
peak RSS (VmHWM) while streaming. Every read is checked by sha256. Writes bench/results/mount-read.json.
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def sh(cmd, env=None, capture=True, check=True):
    return subprocess.run(cmd, env=env, check=check, text=True, capture_output=capture)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed_read(path):
    """Seconds to read the whole file with 1 MiB reads (what a data loader does), without hashing."""
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def read_file(path):
    """Timed read, then an untimed sha256 pass over the same file (a warm read for the mount)."""
    dt = timed_read(path)
    return dt, file_sha(path)


def daemon_pid(mp):
    out = sh(["pgrep", "-f", f"ckptfs mount .* {mp} "], check=False).stdout.split()
    return int(out[0]) if out else None


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if not args.no_build:
        sh(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", "ckptfs"], capture=False)
    ckptfs = os.path.join(ROOT, ".build", "release", "ckptfs")
    if not shutil.which("fio"):
        sh(["apt-get", "install", "-y", "-qq", "fio"], check=False)

    d = os.path.join(OUT, "seaweed-mount")
    shutil.rmtree(d, ignore_errors=True)
    info = json.loads(sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "start", "--dir", d,
                          "--bucket", "bench", "--json"]).stdout)
    env = dict(os.environ, AWS_ENDPOINT_URL=info["endpoint"], AWS_ACCESS_KEY_ID=info["access_key"],
               AWS_SECRET_ACCESS_KEY=info["secret_key"], AWS_REGION="us-east-1")
    mp = os.path.join(OUT, "mnt")
    os.makedirs(mp, exist_ok=True)
    size = args.size_mib << 20
    results = {"cold ckptfs": [], "s5cmd cp": [], "warm ckptfs": [], "local file": []}
    extra = {}
    try:
        local = os.path.join(OUT, "local.bin")
        with open(local, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        _, digest = read_file(local)
        sh(["s5cmd", "--endpoint-url", info["endpoint"], "cp", local, "s3://bench/data/shard.bin"], env=env)

        def mount(cache):
            sh([ckptfs, "mount", "s3://bench", mp, "--cache-dir", cache, "--cache-size", "4GiB"], env=env)

        def unmount():
            sh([ckptfs, "unmount", mp])

        for r in range(args.rounds):
            cache = os.path.join(OUT, f"cache-{r}")
            shutil.rmtree(cache, ignore_errors=True)
            drop_caches()
            mount(cache)
            pid = daemon_pid(mp)
            dt, h = read_file(os.path.join(mp, "data", "shard.bin"))
            assert h == digest, "CHECKSUM MISMATCH (cold ckptfs)"
            results["cold ckptfs"].append(dt)
            extra["daemon_peak_rss_bytes"] = max(extra.get("daemon_peak_rss_bytes", 0), vm_hwm(pid) if pid else 0)
            unmount()

            dst = os.path.join(OUT, "s5cmd.bin")
            if os.path.exists(dst):
                os.unlink(dst)
            drop_caches()
            t0 = time.perf_counter()
            sh(["s5cmd", "--endpoint-url", info["endpoint"], "cp", "s3://bench/data/shard.bin", dst], env=env)
            results["s5cmd cp"].append(time.perf_counter() - t0)
            assert read_file(dst)[1] == digest, "CHECKSUM MISMATCH (s5cmd)"
            os.unlink(dst)

            drop_caches()
            mount(cache)
            dt, h = read_file(os.path.join(mp, "data", "shard.bin"))
            assert h == digest, "CHECKSUM MISMATCH (warm ckptfs)"
            results["warm ckptfs"].append(dt)
            unmount()

            drop_caches()
            dt, h = read_file(local)
            results["local file"].append(dt)
            shutil.rmtree(cache, ignore_errors=True)
            print(f"round {r}: " + ", ".join(f"{k} {size / v[-1] / 1e6:.0f} MB/s" for k, v in results.items()), flush=True)

        if shutil.which("fio"):
            for label in ("cold", "cached"):
                cache = os.path.join(OUT, "cache-fio")
                if label == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                drop_caches()
                mount(cache)
                out = sh(["fio", "--name=rand", f"--filename={os.path.join(mp, 'data', 'shard.bin')}", "--rw=randread",
                          "--bs=4k", "--direct=0", "--ioengine=psync", "--numjobs=4", "--runtime=15", "--time_based",
                          "--readonly", "--output-format=json", "--invalidate=1"]).stdout
                extra[f"fio_4k_randread_iops_{label}"] = sum(j["read"]["iops"] for j in json.loads(out)["jobs"])
                unmount()
            shutil.rmtree(os.path.join(OUT, "cache-fio"), ignore_errors=True)
    finally:
        sh([ckptfs, "unmount", mp], check=False)
        sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "stop", "--dir", d], check=False)
        for p in (os.path.join(OUT, "local.bin"),):
            if os.path.exists(p):
                os.unlink(p)

    med = {k: size / statistics.median(v) / 1e6 for k, v in results.items()}
    ratios = {"cold ckptfs / s5cmd cp": med["cold ckptfs"] / med["s5cmd cp"],
              "warm ckptfs / cold ckptfs": med["warm ckptfs"] / med["cold ckptfs"],
              "warm ckptfs / local file": med["warm ckptfs"] / med["local file"]}
    print("\n| read of a %d MiB object | median MB/s | runs (s) |\n|---|---|---|" % args.size_mib)
    for k, v in results.items():
        print(f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.2f}' for x in v)} |")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for k, v in extra.items():
        print(f"{k}: {v:,.0f}")
    path = os.path.join(ROOT, "bench", "results", "mount-read.json")
    with open(path, "w") as f:
        json.dump({"size_bytes": size, "rounds": args.rounds, "median_MBps": med, "runs_seconds": results,
                   "ratios": ratios, **extra, "command": "bench/mount_read.py " + " ".join(sys.argv[1:]),
                   "machine": {"cores": os.cpu_count()}, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                  f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
