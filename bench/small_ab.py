#!/usr/bin/env python3
"""Many small files written through the mount and made durable (`ckptfs flush`), two ckptfs builds against
s5cmd (a local write, then `s5cmd cp`), alternating rounds, medians, on a SeaweedFS of its own (scripts/seaweed.py).
Prints the daemon's CPU per file too (utime+stime from /proc over the writes, the flush and BENCH_SETTLE
seconds after it, 2 by default, for the work that follows a flush, such as entering saves in the block cache).
Usage: bench/small_ab.py BIN_A BIN_B ROUNDS N [DELAY_MS]  (DELAY_MS: bench/latency_proxy.py per direction)"""
import json, os, random, shutil, statistics, subprocess, sys, time
A, B, ROUNDS, N = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
DELAY = int(sys.argv[5]) if len(sys.argv) > 5 else 0
SETTLE = float(os.environ.get("BENCH_SETTLE", "2"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.environ.get("BENCH_WORK", "/tmp/small_ab")
shutil.rmtree(W, ignore_errors=True); os.makedirs(W)
info = json.loads(subprocess.run(["python3", ROOT + "/scripts/seaweed.py", "start", "--dir", W + "/sw", "--bucket", "ckpt", "--json"],
                                 check=True, capture_output=True, text=True).stdout)
endpoint = info["endpoint"]
proxy = None
if DELAY:
    pf = W + "/port"
    proxy = subprocess.Popen(["python3", ROOT + "/bench/latency_proxy.py", "--listen", "127.0.0.1:0", "--target",
                              endpoint.split("//")[1], "--delay-ms", str(DELAY), "--port-file", pf])
    while not os.path.exists(pf) or not open(pf).read().strip(): time.sleep(0.1)
    endpoint = "http://127.0.0.1:" + open(pf).read().strip()
env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=info["access_key"], AWS_SECRET_ACCESS_KEY=info["secret_key"], AWS_REGION="us-east-1")
rng = random.Random(1)
files = [rng.randbytes(64 << 10) for _ in range(N)]
res = {"A": [], "B": [], "s5cmd": []}
cpu = {"A": [], "B": []}
def daemon_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def ck(name, binary, r):
    mp, cache = f"{W}/mp-{name}", f"{W}/cache-{name}-{r}"
    os.makedirs(mp, exist_ok=True)
    subprocess.run([binary, "mount", "s3://ckpt", mp, "--cache-dir", cache], check=True, env=env, capture_output=True)
    d = f"{mp}/sw-{name}-{r}"; os.makedirs(d)
    pid = subprocess.run(["pgrep", "-n", "-f", f"mount s3://ckpt {mp}"], capture_output=True, text=True).stdout.split()[0]
    cpu0 = daemon_cpu(pid)
    t = time.monotonic()
    for i, data in enumerate(files):
        with open(f"{d}/f{i:05d}", "wb") as f: f.write(data)
    tw = time.monotonic() - t
    subprocess.run([binary, "flush", mp], check=True, env=env)
    dt = time.monotonic() - t
    time.sleep(SETTLE)  # the landed saves' entry in the block cache runs after the flush
    cpu[name].append(daemon_cpu(pid) - cpu0)
    print(f"  {name}: writes {tw:.2f}s flush {dt - tw:.2f}s daemon CPU {cpu[name][-1]:.2f}s", flush=True)
    subprocess.run([binary, "unmount", mp], check=True, env=env)
    shutil.rmtree(cache, ignore_errors=True)
    return dt
def s5(r):
    d = f"{W}/local-{r}"; os.makedirs(d)
    t = time.monotonic()
    for i, data in enumerate(files):
        with open(f"{d}/f{i:05d}", "wb") as f: f.write(data)
    subprocess.run(["s5cmd", "--endpoint-url", endpoint, "cp", d + "/*", f"s3://ckpt/s5-{r}/"], check=True, env=env, capture_output=True)
    dt = time.monotonic() - t
    shutil.rmtree(d)
    return dt
try:
    for r in range(ROUNDS):
        order = [("A", lambda: ck("A", A, r)), ("B", lambda: ck("B", B, r)), ("s5cmd", lambda: s5(r))]
        order = order[r % 3:] + order[:r % 3]
        for name, fn in order:
            res[name].append(N / fn())
        print(r, {k: round(v[-1]) for k, v in res.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print("medians files/s", {k: round(v) for k, v in med.items()}, "B/A %.2f" % (med["B"] / med["A"]),
          "A/s5cmd %.2f" % (med["A"] / med["s5cmd"]), "B/s5cmd %.2f" % (med["B"] / med["s5cmd"]))
    print("medians daemon CPU ms per file", {k: round(1000 * statistics.median(v) / N, 2) for k, v in cpu.items()})
finally:
    if proxy: proxy.kill()
    subprocess.run(["python3", ROOT + "/scripts/seaweed.py", "stop", "--dir", W + "/sw"])
