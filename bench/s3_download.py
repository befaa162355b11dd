#!/usr/bin/env python3
"""Parallel ranged download of one large object: the ckptfs S3 client vs s5cmd, same server, same run.

    bench/s3_download.py [--size-mib 1024] [--rounds 3] [--endpoint URL --bucket B]

Without --endpoint it starts a local SeaweedFS (scripts/seaweed.py) and stops it afterwards.
Each round runs every system once, in rotating order; every download is checked by sha256 (a wrong
checksum fails the run; timings never do). Prints a table and writes bench/results/s3-download.json.
"""
import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def sh(cmd, env=None, capture=False):
    r = subprocess.run(cmd, env=env, check=True, text=True, capture_output=capture)
    return r.stdout if capture else None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def make_object(path, size):
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(left, 8 << 20))
            f.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def machine_facts():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except Exception:
            return "not installed"
    return {"cores": os.cpu_count(), "memory_bytes": mem, "kernel": platform.release(),
            "s5cmd": version(["s5cmd", "version"]), "weed": version(["weed", "version"]),
            "ckptfs": version([os.path.join(ROOT, ".build", "release", "ckptfs"), "--version"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--endpoint")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "s3-download.json"))
    args = ap.parse_args()

    os.makedirs(OUT, exist_ok=True)
    if not args.no_build:
        sh(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", "ckpt-s3bench"])
        sh(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", "ckptfs"])
    tool = os.path.join(ROOT, ".build", "release", "ckpt-s3bench")

    env = dict(os.environ)
    started = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        d = os.path.join(OUT, "seaweed")
        shutil.rmtree(d, ignore_errors=True)
        info = json.loads(sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "start", "--dir", d,
                              "--bucket", args.bucket, "--json"], capture=True))
        started = d
        endpoint = info["endpoint"]
        env.update(AWS_ACCESS_KEY_ID=info["access_key"], AWS_SECRET_ACCESS_KEY=info["secret_key"])
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION=env.get("AWS_REGION", "us-east-1"))
    try:
        size = args.size_mib << 20
        src = os.path.join(OUT, "object.bin")
        print(f"generating {args.size_mib} MiB ...", flush=True)
        digest = make_object(src, size)
        key = f"bench/object-{args.size_mib}MiB.bin"
        sh(["s5cmd", "--endpoint-url", endpoint, "cp", src, f"s3://{args.bucket}/{key}"], env=env, capture=True)
        os.unlink(src)

        dst = os.path.join(OUT, "download.bin")
        systems = {
            "ckptfs client": [tool, "download", f"s3://{args.bucket}/{key}", dst],
            "s5cmd cp (defaults)": ["s5cmd", "--endpoint-url", endpoint, "cp", f"s3://{args.bucket}/{key}", dst],
            "s5cmd cp (-c 16 -p 8)": ["s5cmd", "--endpoint-url", endpoint, "cp", "-c", "16", "-p", "8",
                                      f"s3://{args.bucket}/{key}", dst],
        }
        names = list(systems)
        times = {n: [] for n in names}
        cpu = {n: [] for n in names}
        for r in range(args.rounds + 1):  # round 0 warms up every path and is not counted
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                if os.path.exists(dst):
                    os.unlink(dst)
                os.sync()  # the previous run's dirty pages must not be flushed during this one
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                sh(systems[n], env=env, capture=True)
                dt = time.perf_counter() - t0
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
                got = sha256_file(dst)
                if got != digest:
                    raise SystemExit(f"CHECKSUM MISMATCH for {n}: {got} != {digest}")
                if r > 0:
                    times[n].append(dt)
                    cpu[n].append(cpu_s)
                print(f"round {r} {n:24s} {size / dt / 1e6:8.1f} MB/s  {cpu_s:5.2f} CPU s"
                      f"{'  (warm-up)' if r == 0 else ''}", flush=True)
        if os.path.exists(dst):
            os.unlink(dst)
    finally:
        if started:
            sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "stop", "--dir", started])

    results = {n: {"median_seconds": statistics.median(t), "median_MBps": size / statistics.median(t) / 1e6,
                   "runs_seconds": t, "median_cpu_seconds": statistics.median(cpu[n])} for n, t in times.items()}
    base = results["ckptfs client"]["median_MBps"]
    ratios = {f"ckptfs / {n}": base / results[n]["median_MBps"] for n in names if n != "ckptfs client"}
    print()
    print("| system | median MB/s | median CPU s (client) | runs (s) |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {results[n]['median_MBps']:.0f} | {results[n]['median_cpu_seconds']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in times[n])} |")
    for k, v in ratios.items():
        print(f"\n{k}: {v:.2f}x", end="")
    print()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"workload": f"parallel ranged download of a {args.size_mib} MiB object", "size_bytes": size,
                   "rounds": args.rounds, "endpoint": "local SeaweedFS" if started else "given", "results": results,
                   "ratios": ratios, "machine": machine_facts(),
                   "command": "bench/s3_download.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
