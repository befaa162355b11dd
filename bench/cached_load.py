#!/usr/bin/env python3
"""A cached load after a remount: how fast, and how much daemon CPU, two ckptfs builds read a 1 GiB object
whose blocks are all in the cache (written there by a first read, then the mount is unmounted and mounted
again on the same cache directory, and the kernel's caches are dropped), against reading a local copy.

    bench/cached_load.py ROUNDS BIN_A BIN_B      # e.g. 3 /tmp/before/ckptfs .build/release/ckptfs
    bench/cached_load.py ROUNDS BIN_A BIN_B --saved

With --saved, the object is not read in first but saved through the mount (written in 1 MiB writes, fsync,
close: a training job's checkpoint), then the mount is unmounted and mounted again on the same cache directory
and the object read back (a training restart, issue 19); each round also prints the daemon's CPU over the save
(until it is idle again after the fsync, so work done after landing counts) and the GETs the load sent
(`ckptfs status`).

Starts its own SeaweedFS on loopback (scripts/seaweed.py), alternates the builds each round, checks every
read by sha256, and prints per round and the medians: seconds, the daemon's CPU seconds (utime+stime from
/proc/PID/stat over the read) and the local copy's seconds. Run as root (drop_caches, FUSE).
"""
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))
GiB = 1 << 30


def cpu(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def timed_read(path):
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while b := f.read(1 << 20):
            h.update(b)
    return time.perf_counter() - t, h.hexdigest()


def idle_cpu(pid, quiet=1.0):
    """The daemon's CPU seconds once it has used none for `quiet` seconds (its work after a save has ended)."""
    last = cpu(pid)
    while True:
        time.sleep(quiet)
        now = cpu(pid)
        if now == last:
            return now
        last = now


def main():
    saved = "--saved" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--saved"]
    rounds, bins = int(args[0]), args[1:3]
    work = tempfile.mkdtemp(prefix="ckptfs-cached-load-")
    seaweed = [sys.executable, os.path.join(HERE, "..", "scripts", "seaweed.py")]
    sw = json.loads(subprocess.run(seaweed + ["start", "--dir", work + "/sw", "--bucket", "ckpt", "--json"],
                                   check=True, capture_output=True, text=True).stdout)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=sw["access_key"], AWS_SECRET_ACCESS_KEY=sw["secret_key"],
               AWS_REGION=sw["region"], AWS_ENDPOINT_URL=sw["endpoint"])
    mp = work + "/mnt"
    os.makedirs(mp)
    try:
        local = work + "/local.bin"
        with open(local, "wb") as f:
            f.write(os.urandom(GiB))
        want = hashlib.sha256(open(local, "rb").read()).hexdigest()
        s3 = boto3.client("s3", endpoint_url=sw["endpoint"], aws_access_key_id=sw["access_key"],
                          aws_secret_access_key=sw["secret_key"], region_name=sw["region"])
        s3.upload_file(local, "ckpt", "big.bin")

        def mount(b, cache):
            subprocess.run([b, "mount", "s3://ckpt", mp, "--cache-dir", cache, "--cache-size", "4GiB"],
                           env=env, check=True, capture_output=True)
            out = subprocess.run(["pgrep", "-f", f"ckptfs[^ ]* mount s3://ckpt {mp} "], capture_output=True, text=True)
            return int(out.stdout.split()[0])

        def unmount(pid=None):
            subprocess.run(["fusermount3", "-u", mp], check=True)
            # The daemon finishes its cache writes before it exits and gives up the cache directory.
            while pid is not None and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
            time.sleep(1)

        def gets(b):
            out = subprocess.run([b, "status", mp, "--json"], env=env, check=True, capture_output=True, text=True)
            return json.loads(out.stdout)["getRequests"]

        def save(pid, path):
            c0 = cpu(pid)
            with open(local, "rb") as src, open(path, "wb") as dst:
                while b := src.read(1 << 20):
                    dst.write(b)
                dst.flush()
                os.fsync(dst.fileno())
            return idle_cpu(pid) - c0

        results = {b: [] for b in bins}
        results["local"] = []
        for r in range(rounds):
            for b in (bins if r % 2 == 0 else bins[::-1]):
                cache = f"{work}/cache-{r}-{bins.index(b)}"
                pid = mount(b, cache)
                name = f"saved-{r}-{bins.index(b)}.bin" if saved else "big.bin"
                save_cpu = save(pid, mp + "/" + name) if saved else 0.0
                if not saved:
                    timed_read(mp + "/big.bin")  # fills the cache
                unmount(pid)
                pid = mount(b, cache)
                c0 = cpu(pid)
                secs, digest = timed_read(mp + "/" + name)
                c1 = cpu(pid)
                n_gets = gets(b)
                unmount(pid)
                subprocess.run(["rm", "-rf", cache])
                assert digest == want, f"{b}: read {digest}, wrote {want}"
                results[b].append((secs, c1 - c0, save_cpu, n_gets))
                extra = f", save: daemon {save_cpu:.2f} CPU s, load: {n_gets} GETs" if saved else ""
                print(f"round {r} {b}: {secs:.2f} s, daemon {c1 - c0:.2f} CPU s{extra}", flush=True)
            secs, digest = timed_read(local)
            assert digest == want
            results["local"].append((secs, 0.0, 0.0, 0))
            print(f"round {r} local copy: {secs:.2f} s", flush=True)
        for name, v in results.items():
            wall = statistics.median(x[0] for x in v)
            line = f"median {name}: {wall:.2f} s ({GiB / wall / 1e6:.0f} MB/s)"
            if name != "local":
                line += f", daemon {statistics.median(x[1] for x in v):.2f} CPU s per GiB"
                if saved:
                    line += (f"; save: daemon {statistics.median(x[2] for x in v):.2f} CPU s per GiB; "
                             f"load GETs {statistics.median(x[3] for x in v):.0f}")
            print(line)
    finally:
        subprocess.run(["fusermount3", "-u", mp], capture_output=True)
        subprocess.run(seaweed + ["stop", "--dir", work + "/sw"], capture_output=True)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
