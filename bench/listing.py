#!/usr/bin/env python3
"""A directory of 100,000 objects through the mount: listing time and the daemon's memory.

    bench/listing.py [--objects 100000] [--repeats 4] [--metadata-ttl 5] [--output listing]

Starts a local SeaweedFS on loopback (scripts/seaweed.py), puts N one-byte objects under big/ with
`s5cmd run` (about 1,000 objects/s here), mounts the bucket with a short metadata TTL and measures:
  - `ls -f big` (names only) and `find` of the whole mount, on a fresh mount;
  - `ls -l big` (names and attributes) several times, each after the TTL has passed, so every one lists the
    bucket again: the daemon's RSS after each shows whether memory grows with repeated listings;
  - `s5cmd ls` of the same prefix, the direct-S3 reference.
Every listing is checked to have N entries. Results: bench/results/NAME.json and NAME.md.
Needs a release build of ckptfs and s5cmd.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

from ckptbench.common import ROOT, require_tools
from ckptbench.report import save_results
from ckptbench.server import start_seaweed, stop_seaweed

OUT = os.path.join(ROOT, "bench", "out", "listing")


def rss_mib(pid):
    fields = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("Vm")}
    return fields["VmRSS"] / 1024, fields["VmHWM"] / 1024


def timed(cmd, expect, env=None, count_lines=True):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"listing: {cmd} failed: {r.stderr.strip()[:300]}")
    n = len(r.stdout.splitlines())
    if count_lines and n != expect:
        raise SystemExit(f"listing: {cmd} gave {n} lines, expected {expect}")
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--metadata-ttl", type=int, default=5)
    ap.add_argument("--output", default="listing")
    args = ap.parse_args()
    binary = require_tools("listing")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    info, env = start_seaweed(OUT, "listing", "listing")
    s5 = ["s5cmd", "--endpoint-url", info["endpoint"]]
    mp = os.path.join(OUT, "mnt")
    os.makedirs(mp)
    n = args.objects
    rows = []
    try:
        one = os.path.join(OUT, "one.txt")
        with open(one, "w") as f:
            f.write("x")
        cmds = os.path.join(OUT, "put.txt")
        with open(cmds, "w") as f:
            for i in range(n):
                f.write(f"cp {one} s3://listing/big/shard-{i:07d}.bin\n")
        t0 = time.perf_counter()
        subprocess.run(s5 + ["run", cmds], env=env, check=True, capture_output=True)
        print(f"put {n} objects in {time.perf_counter() - t0:.0f} s", flush=True)

        s5ls = timed(s5 + ["ls", "s3://listing/big/*"], n, env)
        rows.append(dict(what="s5cmd ls (direct S3)", seconds=s5ls))

        r = subprocess.run([binary, "mount", "s3://listing", mp, "--cache-dir", os.path.join(OUT, "cache"),
                            "--metadata-ttl", str(args.metadata_ttl)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"listing: mount failed: {r.stderr}")
        pid = int(subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True,
                                 text=True).stdout.split()[0])
        base = rss_mib(pid)[0]
        rows.append(dict(what="daemon at mount", rss_mib=base))
        big = os.path.join(mp, "big")
        dt = timed(["ls", "-f", big], n + 2)
        rows.append(dict(what="ls -f (fresh mount)", seconds=dt, rss_mib=rss_mib(pid)[0]))
        time.sleep(args.metadata_ttl + 1)
        for i in range(args.repeats):
            dt = timed(["ls", "-l", big], n + 1)
            rows.append(dict(what=f"ls -l #{i + 1}", seconds=dt, rss_mib=rss_mib(pid)[0]))
            time.sleep(args.metadata_ttl + 1)
        dt = timed(["find", mp, "-type", "f"], n)
        rss, hwm = rss_mib(pid)
        rows.append(dict(what="find (whole mount)", seconds=dt, rss_mib=rss, peak_rss_mib=hwm))
    finally:
        subprocess.run([binary, "unmount", mp], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        stop_seaweed(OUT)

    command = "bench/listing.py " + " ".join(sys.argv[1:])
    res = dict(command=command, date=time.strftime("%Y-%m-%d"), objects=n, metadata_ttl=args.metadata_ttl,
               rows=rows, cpus=os.cpu_count())
    lines = [f"One directory of {n:,} objects; each `ls -l` runs after the {args.metadata_ttl} s metadata TTL "
             "has passed, so it lists the bucket again.", "",
             "| what | seconds | daemon RSS MiB |", "|---|---|---|"]
    for r in rows:
        sec = f"{r['seconds']:.2f}" if "seconds" in r else ""
        rss = f"{r['rss_mib']:.0f}" if "rss_mib" in r else ""
        if "peak_rss_mib" in r:
            rss += f" (peak {r['peak_rss_mib']:.0f})"
        lines.append(f"| {r['what']} | {sec} | {rss} |")
    print("\n".join(save_results(args.output, res, lines)))


if __name__ == "__main__":
    main()
