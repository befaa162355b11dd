#!/usr/bin/env python3
"""Cold sequential read of a 1 GiB object, ckptfs against `s5cmd cp`, repeated in alternating rounds.

    bench/read_rounds.py [--rounds 5] [--size-mib 1024] [--config "ARGS"]... [--latency-ms 0] [--output read-rounds]

One figure per system varies by ±40% on the 2-core bench machine (the server, the client and the daemon
share the cores), so this runs several rounds, each one s5cmd download then every ckptfs configuration
(fresh cache, kernel caches dropped before each), and reports the median of each and the ratio of the
medians. Every ckptfs read is checked by sha256 against the object. Also recorded per read: the daemon's
CPU seconds (user+system), minor page faults and peak RSS, and the server's CPU seconds.

Both start their timed read the same --settle seconds (default 3) after the caches are dropped: on the
bench VM, memory freed by drop_caches is handed back to the host after about 2 s (free page reporting,
page_reporting_order=11 on its kernel command line), and touching it again then costs ~3 s of system time
per GiB (measured at the start of each run and recorded as first_touch_s_per_gib). Without the settle,
whichever system starts sooner after the drop gets the cheap pages: s5cmd started at once while ckptfs
first mounted. The ckptfs mount is made before the drop for the same reason.

With --latency-ms N both go through bench/latency_proxy.py (N ms added each way). A local SeaweedFS is
started on loopback for the run (scripts/seaweed.py) and stopped afterwards. Results:
bench/results/NAME.json and NAME.md. Needs root (drop_caches), s5cmd and a release build of ckptfs.
"""
import argparse
import hashlib
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from ckptbench.common import ROOT, drop_caches, require_tools
from ckptbench.report import save_results
from ckptbench.server import start_seaweed, stop_seaweed

OUT = os.path.join(ROOT, "bench", "out", "read-rounds")
MiB = 1 << 20


def first_touch_cost():
    """System seconds per GiB to write into the page cache right after a drop and a settle (fresh memory),
    and to overwrite the same pages (memory already backed)."""
    path = os.path.join(OUT, "touch.bin")
    block = b"\0" * MiB
    out = []
    for fresh in (True, False):
        if fresh:
            drop_caches(required=True)
            time.sleep(3)
        t0 = os.times()
        with open(path, "r+b" if not fresh else "wb") as f:
            for _ in range(256):
                f.write(block)
        t1 = os.times()
        out.append((t1.system - t0.system) * 4)
    os.unlink(path)
    return out


def cpu_seconds(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK"), int(st[7])  # utime+stime, minflt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--config", action="append", default=None,
                    help='extra ckptfs mount arguments, e.g. "--max-read-ahead 32MiB"; repeatable ("" = defaults)')
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between dropping the caches and starting a timed read, for both systems")
    ap.add_argument("--output", default="read-rounds")
    args = ap.parse_args()
    configs = args.config if args.config is not None else [""]
    binary = require_tools("read_rounds")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    info, env = start_seaweed(OUT, "rounds", "read_rounds")
    server_pid = info["pid"]
    proxy = None
    if args.latency_ms:
        pf = os.path.join(OUT, "proxy.port")
        proxy = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "latency_proxy.py"), "--target",
                                  info["endpoint"].split("://", 1)[1], "--delay-ms", str(args.latency_ms),
                                  "--port-file", pf])
        deadline = time.monotonic() + 10
        while not (os.path.exists(pf) and open(pf).read().strip()):
            if time.monotonic() > deadline:
                raise SystemExit("read_rounds: the latency proxy did not start")
            time.sleep(0.05)
        info["endpoint"] = "http://127.0.0.1:" + open(pf).read().strip()
    env["AWS_ENDPOINT_URL"] = info["endpoint"]
    s5 = ["s5cmd", "--endpoint-url", info["endpoint"]]
    mp = os.path.join(OUT, "mnt")
    os.makedirs(mp)
    rows = []
    try:
        src = os.path.join(OUT, "object.bin")
        digest = hashlib.sha256()
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                b = os.urandom(MiB)
                digest.update(b)
                f.write(b)
        want = digest.hexdigest()
        subprocess.run(s5 + ["cp", src, "s3://rounds/object.bin"], env=env, check=True, capture_output=True)
        os.unlink(src)
        size = args.size_mib * MiB

        fresh, rewrite = first_touch_cost()
        print(f"page cache writes: {fresh:.2f} system s/GiB into fresh memory, {rewrite:.2f} over backed pages",
              flush=True)
        for rnd in range(args.rounds):
            dst = os.path.join(OUT, "download.bin")
            drop_caches(required=True)
            time.sleep(args.settle)
            s0, c0 = cpu_seconds(server_pid)[0], resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(s5 + ["cp", "s3://rounds/object.bin", dst], env=env, check=True, capture_output=True)
            dt = time.perf_counter() - t0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            rows.append(dict(round=rnd, system="s5cmd", mb_s=size / dt / 1e6, seconds=dt,
                             client_cpu=c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime,
                             server_cpu=cpu_seconds(server_pid)[0] - s0))
            os.unlink(dst)
            print(f"round {rnd}: s5cmd {size / dt / 1e6:.0f} MB/s", flush=True)
            for cfg in configs:
                cache = os.path.join(OUT, "cache")
                shutil.rmtree(cache, ignore_errors=True)
                r = subprocess.run([binary, "mount", "s3://rounds", mp, "--cache-dir", cache, *cfg.split()],
                                   env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"read_rounds: mount failed: {r.stderr}")
                pid = int(subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True,
                                         text=True).stdout.split()[0])
                drop_caches(required=True)
                time.sleep(args.settle)
                d0, f0 = cpu_seconds(pid)
                s0 = cpu_seconds(server_pid)[0]
                buf = bytearray(MiB)
                h = hashlib.sha256() if rnd == 0 else None
                t0 = time.perf_counter()
                with open(os.path.join(mp, "object.bin"), "rb", buffering=0) as f:
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        if h:
                            h.update(memoryview(buf)[:n])
                dt = time.perf_counter() - t0
                d1, f1 = cpu_seconds(pid)
                rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")) // 1024
                server = cpu_seconds(server_pid)[0] - s0
                subprocess.run([binary, "unmount", mp], capture_output=True)
                while subprocess.run(["mountpoint", "-q", mp]).returncode == 0:
                    time.sleep(0.1)
                if h and h.hexdigest() != want:
                    raise SystemExit(f"read_rounds: ckptfs {cfg!r} returned wrong bytes")
                name = "ckptfs" + (f" {cfg}" if cfg else "")
                rows.append(dict(round=rnd, system=name, mb_s=size / dt / 1e6, seconds=dt, daemon_cpu=d1 - d0,
                                 minor_faults=f1 - f0, peak_rss_mib=rss, server_cpu=server,
                                 note="sha256 checked" if h else ""))
                print(f"   {name}: {size / dt / 1e6:.0f} MB/s, daemon {d1 - d0:.2f} CPU s, {rss} MiB peak RSS",
                      flush=True)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        if proxy:
            proxy.terminate()
        stop_seaweed(OUT)

    systems = list(dict.fromkeys(r["system"] for r in rows))
    base = statistics.median(r["mb_s"] for r in rows if r["system"] == "s5cmd")
    summary = []
    for s in systems:
        mine = [r for r in rows if r["system"] == s]
        med = statistics.median(r["mb_s"] for r in mine)
        summary.append(dict(system=s, median_mb_s=med, min_mb_s=min(r["mb_s"] for r in mine),
                            max_mb_s=max(r["mb_s"] for r in mine), ratio_of_medians=med / base,
                            per_round_ratios=[r["mb_s"] / b["mb_s"] for r, b in
                                              zip(mine, [x for x in rows if x["system"] == "s5cmd"])]))
    command = "bench/read_rounds.py " + shlex.join(sys.argv[1:])
    res = dict(command=command, date=time.strftime("%Y-%m-%d"), size_mib=args.size_mib, latency_ms=args.latency_ms,
               settle_s=args.settle, first_touch_s_per_gib=fresh, rewrite_s_per_gib=rewrite, rounds=rows,
               summary=summary, cpus=os.cpu_count())
    lines = [f"Cold sequential read of a {args.size_mib} MiB object ({args.latency_ms} ms added each way), "
             f"{args.rounds} alternating rounds, each read starting {args.settle:g} s after the caches were dropped; "
             "median, range, and the ratio of ckptfs's median to s5cmd's.", "",
             f"Writing into the page cache cost {fresh:.2f} system s/GiB in fresh memory and {rewrite:.2f} over "
             "pages already backed (this VM returns freed memory to its host).", "",
             "| system | median MB/s | min | max | vs s5cmd (medians) | per-round ratios |", "|---|---|---|---|---|---|"]
    for s in summary:
        per = ", ".join(f"{x:.2f}" for x in s["per_round_ratios"]) if s["system"] != "s5cmd" else ""
        lines.append(f"| {s['system']} | {s['median_mb_s']:.0f} | {s['min_mb_s']:.0f} | {s['max_mb_s']:.0f} | "
                     f"{s['ratio_of_medians']:.2f}x | {per} |")
    lines += ["", "| round | system | MB/s | daemon CPU s | minor faults | peak RSS MiB | server CPU s | client CPU s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["system"] == "s5cmd":
            daemon = " | | "
            client = f"{r['client_cpu']:.2f}"
        else:
            daemon = f" {r['daemon_cpu']:.2f} | {r['minor_faults']} | {r['peak_rss_mib']} "
            client = ""
        lines.append(f"| {r['round']} | {r['system']} | {r['mb_s']:.0f} |{daemon}| {r['server_cpu']:.2f} | {client} |")
    out = save_results(args.output, res, lines)
    print("\n".join(out[:len(out) - len(rows) - 3]))  # all but the per-round table


if __name__ == "__main__":
    main()
