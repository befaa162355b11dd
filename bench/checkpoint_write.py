#!/usr/bin/env python3
"""Saving checkpoints through the mount vs local disk + direct S3 upload, same server, same run.

    bench/checkpoint_write.py [--size-mib 2048] [--small 1000] [--rounds 2] [--no-build]

Starts a local SeaweedFS, then per round:
  - a checkpoint of SIZE written sequentially in 1 MiB writes (like torch.save) through ckptfs: time until
    close() returns, and until `ckptfs flush` says it is durable in S3;
  - the same bytes written to a local file (time until close), then `s5cmd cp` of that file (direct S3);
  - SMALL files of 64 KiB written through ckptfs and made durable, vs written locally and uploaded with
    `s5cmd cp 'dir/*'`.
Every uploaded object is checked by sha256 against what was written. Writes bench/results/checkpoint-write.json.
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

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
MiB = 1 << 20


def sh(cmd, env=None, check=True):
    return subprocess.run(cmd, env=env, check=check, text=True, capture_output=True)


def write_file(path, chunk, n, fsync=False):
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(n):
            f.write(chunk)
        if fsync:
            os.fsync(f.fileno())
    return time.perf_counter() - t0


def s3_sha(s3, bucket, key):
    h = hashlib.sha256()
    for b in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MiB):
        h.update(b)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if not args.no_build:
        subprocess.run(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", "ckptfs"], check=True)
    ckptfs = os.path.join(ROOT, ".build", "release", "ckptfs")
    d = os.path.join(OUT, "seaweed-write")
    shutil.rmtree(d, ignore_errors=True)
    info = json.loads(sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "start", "--dir", d,
                          "--bucket", "bench", "--json"]).stdout)
    env = dict(os.environ, AWS_ENDPOINT_URL=info["endpoint"], AWS_ACCESS_KEY_ID=info["access_key"],
               AWS_SECRET_ACCESS_KEY=info["secret_key"], AWS_REGION="us-east-1")
    s3 = boto3.client("s3", endpoint_url=info["endpoint"], aws_access_key_id=info["access_key"],
                      aws_secret_access_key=info["secret_key"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    s5 = ["s5cmd", "--endpoint-url", info["endpoint"]]
    mp = os.path.join(OUT, "mnt-write")
    os.makedirs(mp, exist_ok=True)
    chunk = os.urandom(MiB)
    digest = hashlib.sha256(chunk * args.size_mib).hexdigest()
    small = [os.urandom(64 * 1024) for _ in range(args.small)]
    r = {k: [] for k in ["ckptfs close", "ckptfs durable", "local close", "s5cmd cp", "local+s5cmd",
                         "ckptfs small durable", "local small + s5cmd"]}
    peak_rss = 0
    try:
        for rnd in range(args.rounds):
            cache = os.path.join(OUT, f"wcache-{rnd}")
            shutil.rmtree(cache, ignore_errors=True)
            sh([ckptfs, "mount", "s3://bench", mp, "--cache-dir", cache, "--cache-size", "8GiB"], env=env)
            pid = int(sh(["pgrep", "-f", f"ckptfs mount .* {mp} "]).stdout.split()[0])
            t0 = time.perf_counter()
            close_s = write_file(f"{mp}/ckpt-{rnd}.pt", chunk, args.size_mib)
            sh([ckptfs, "flush", mp], env=env)
            durable_s = time.perf_counter() - t0
            with open(f"/proc/{pid}/status") as f:
                peak_rss = max(peak_rss, next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM")))
            assert s3_sha(s3, "bench", f"ckpt-{rnd}.pt") == digest, "CHECKSUM MISMATCH (ckptfs)"
            r["ckptfs close"].append(close_s)
            r["ckptfs durable"].append(durable_s)

            os.makedirs(f"{mp}/small-{rnd}")
            t0 = time.perf_counter()
            for i, b in enumerate(small):
                with open(f"{mp}/small-{rnd}/f{i:04d}.bin", "wb") as f:
                    f.write(b)
            sh([ckptfs, "flush", mp], env=env)
            r["ckptfs small durable"].append(time.perf_counter() - t0)
            sh([ckptfs, "unmount", mp], env=env)
            shutil.rmtree(cache, ignore_errors=True)

            local = os.path.join(OUT, "local-ckpt.pt")
            lc = write_file(local, chunk, args.size_mib)
            t0 = time.perf_counter()
            sh(s5 + ["cp", local, f"s3://bench/direct-{rnd}.pt"], env=env)
            up = time.perf_counter() - t0
            assert s3_sha(s3, "bench", f"direct-{rnd}.pt") == digest, "CHECKSUM MISMATCH (s5cmd)"
            r["local close"].append(lc)
            r["s5cmd cp"].append(up)
            r["local+s5cmd"].append(lc + up)
            os.unlink(local)

            ld = os.path.join(OUT, "local-small")
            shutil.rmtree(ld, ignore_errors=True)
            os.makedirs(ld)
            t0 = time.perf_counter()
            for i, b in enumerate(small):
                with open(f"{ld}/f{i:04d}.bin", "wb") as f:
                    f.write(b)
            sh(s5 + ["cp", f"{ld}/*", f"s3://bench/direct-small-{rnd}/"], env=env)
            r["local small + s5cmd"].append(time.perf_counter() - t0)
            shutil.rmtree(ld)
            for i in (0, len(small) - 1):
                want = hashlib.sha256(small[i]).hexdigest()
                assert s3_sha(s3, "bench", f"small-{rnd}/f{i:04d}.bin") == want, "CHECKSUM MISMATCH (small)"
            print(f"round {rnd}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in r.items()), flush=True)
    finally:
        sh([ckptfs, "unmount", mp], check=False)
        sh([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "stop", "--dir", d], check=False)

    med = {k: statistics.median(v) for k, v in r.items()}
    size = args.size_mib * MiB
    ratios = {
        "close: local write time / ckptfs close time": med["local close"] / med["ckptfs close"],
        "durable: (local write + s5cmd cp) / ckptfs write-to-durable": med["local+s5cmd"] / med["ckptfs durable"],
        "upload only: s5cmd cp / ckptfs write-to-durable": med["s5cmd cp"] / med["ckptfs durable"],
        "small files: (local + s5cmd) / ckptfs": med["local small + s5cmd"] / med["ckptfs small durable"],
    }
    print(f"\n| {args.size_mib} MiB checkpoint, {args.small} x 64 KiB | median s | MB/s |\n|---|---|---|")
    for k, v in med.items():
        mbps = (size if "small" not in k else args.small * 65536) / v / 1e6
        print(f"| {k} | {v:.2f} | {mbps:.0f} |")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(f"daemon peak RSS: {peak_rss / MiB:.0f} MiB")
    path = os.path.join(ROOT, "bench", "results", "checkpoint-write.json")
    with open(path, "w") as f:
        json.dump({"size_bytes": size, "small_files": args.small, "rounds": args.rounds, "median_seconds": med,
                   "runs_seconds": r, "ratios": ratios, "daemon_peak_rss_bytes": peak_rss,
                   "command": "bench/checkpoint_write.py " + " ".join(sys.argv[1:]),
                   "machine": {"cores": os.cpu_count()}, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                  f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
