#!/usr/bin/env python3
"""Crash trials: kill -9 the ckptfs daemon at random moments of a trainer-like workload, recover, and check
from outside with boto3 that nothing acknowledged was lost, nothing deleted came back, no multipart upload
was left open, and S3 always held a loadable checkpoint.

    python3 scripts/crash_trials.py --trials 30 --bin PATH [--seed S] [--only K] [--keep]

Each trial, on its own bucket of a local SeaweedFS (started here on 127.0.0.1, stopped at the end):
  1. S3 is seeded with ckpt-0 (a trainer resuming), then the bucket is mounted with mount options drawn at
     random (--upload-delay 0 / 0.2 / default, sometimes --upload-while-writing).
  2. A workload process runs a training loop on the mount, logging (outside the mount) every operation
     before it starts and when it returns: torch-like checkpoint saves (a zip archive of several MB, some
     over 16 MiB so they go up in parts), written to ckpt-N.tmp (fsync or not) and renamed to ckpt-N, or
     saved straight to ckpt-N; an atomic-write helper that fsyncs and renames before close (`latest`);
     trainer_state.json overwritten in place (O_TRUNC); metrics.jsonl appended; now and then an 18 MiB
     scratch file deleted right after its close (its delete races its multipart upload); rotation deleting
     ckpt-(N-2) or, like save_total_limit=1, ckpt-(N-1).
  3. An observer thread lists the bucket every 0.25 s and loads each new checkpoint object (zip test of
     every member); at a random moment (in about a third of the trials: 0 to 1.2 s after a scratch file's
     delete returned) the daemon is killed with SIGKILL, and S3 (frozen: nothing writes
     any more) is checked once more for a loadable checkpoint.
  4. The dead mount is detached, the bucket remounted with the SAME cache directory, `ckptfs flush` run,
     status read, the mount's view compared, and the mount unmounted cleanly.
  5. The log is replayed into the acknowledged state (close() or fsync() returned: those bytes; rename or
     unlink returned: the move or deletion), allowing the one operation in flight at the kill to have
     happened or not, and compared with S3 by sha256.

Violations counted: lost (an acknowledged file missing or holding older bytes), wrong (bytes never
acknowledged), resurrected (a deleted file back), unexpected (a key the workload never acknowledged, e.g.
half a rename), mpu (multipart uploads left open after recovery and a clean unmount), no-ckpt (moments when
S3 held no loadable checkpoint), view (the remounted mount shows other bytes than S3), flush/remount
failures. A summary table, then 'N passed, M failed'; the exit status is 1 on any violation.
"""
import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
EMPTY = hashlib.sha256(b"").hexdigest()
CKPT_RE = re.compile(r"^ckpt-\d+$")


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: a zip archive laid out like torch.save's (archive/data.pkl, archive/data/N, archive/version),
# with a CRC per member, so "loadable" means what torch.load would need: every member present and intact.

def make_checkpoint(rng, step, size):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", json.dumps({"step": step, "tensors": 4}).encode())
        left = size
        for i in range(4):
            n = max(1, left // (4 - i))
            z.writestr(f"archive/data/{i}", rng.randbytes(n))
            left -= n
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def loadable(data):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if z.testzip() is not None:
                return False
            names = set(z.namelist())
            meta = json.loads(z.read("archive/data.pkl"))
            return all(f"archive/data/{i}" in names for i in range(meta["tensors"])) and "archive/version" in names
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------------
# The workload (a separate process: it is the trainer, and it dies of ENOTCONN when the daemon is killed).

class Log:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.n = 0

    def begin(self, op, **kw):
        self.n += 1
        os.write(self.fd, (json.dumps({"e": "b", "i": self.n, "op": op, **kw}) + "\n").encode())
        return self.n

    def ack(self, i):
        os.write(self.fd, (json.dumps({"e": "a", "i": i, "t": time.time()}) + "\n").encode())


def workload(mp, log_path, seed, start_step):
    rng = random.Random(seed)
    log = Log(log_path)
    metrics = b""

    def write_file(name, data, *, do_fsync=False, trunc_existing=False, chunks=True, rewrite_head=False):
        """open, write (in torch-like pieces), optionally fsync, close; each acknowledgement logged."""
        path = os.path.join(mp, name)
        if trunc_existing:
            i = log.begin("open_trunc", path=name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if trunc_existing:
            log.ack(i)
        off = 0
        while off < len(data):
            n = rng.choice([4096, 65536, 1 << 20, 3 * MiB + 17]) if chunks else len(data)
            os.pwrite(fd, data[off:off + n], off)
            off += n
        if rewrite_head and len(data) > 64:
            os.pwrite(fd, data[:64], 0)  # a writer patching its header at the end (HDF5, zip local headers)
        if do_fsync:
            i = log.begin("fsync", path=name, sha=sha(data))
            os.fsync(fd)
            log.ack(i)
        i = log.begin("close", path=name, sha=sha(data))
        os.close(fd)
        log.ack(i)

    def rename(src, dst):
        i = log.begin("rename", src=src, dst=dst)
        os.rename(os.path.join(mp, src), os.path.join(mp, dst))
        log.ack(i)

    def unlink(name):
        i = log.begin("unlink", path=name)
        try:
            os.unlink(os.path.join(mp, name))
        except FileNotFoundError:
            pass
        log.ack(i)

    def atomic_write(name, data):
        """The safe-save idiom of editors and atomic-write helpers: write tmp, fsync, rename, then close."""
        tmp = name + ".tmp"
        fd = os.open(os.path.join(mp, tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        i = log.begin("fsync", path=tmp, sha=sha(data))
        os.fsync(fd)
        log.ack(i)
        rename(tmp, name)
        i = log.begin("close", path=name, sha=sha(data))
        os.close(fd)
        log.ack(i)

    step = start_step
    keep = rng.choice([1, 2])
    while True:
        step += 1
        size = rng.choice([64 * 1024, 2 * MiB, 5 * MiB, 9 * MiB, 20 * MiB]) + rng.randrange(4096)
        ck = make_checkpoint(rng, step, size)
        style = rng.random()
        if style < 0.6:  # torch.save to a temp name, then rename (HF, Lightning, most trainers)
            write_file(f"ckpt-{step}.tmp", ck, do_fsync=rng.random() < 0.5, rewrite_head=rng.random() < 0.3)
            rename(f"ckpt-{step}.tmp", f"ckpt-{step}")
        else:  # torch.save straight to the final name
            write_file(f"ckpt-{step}", ck, do_fsync=rng.random() < 0.5, rewrite_head=rng.random() < 0.3)
        if rng.random() < 0.15:  # a save thrown away at once (failed validation): its delete races its upload
            write_file(f"scratch-{step}.tmp", rng.randbytes(18 * MiB + rng.randrange(MiB)))
            unlink(f"scratch-{step}.tmp")
        if rng.random() < 0.7:
            atomic_write("latest", f"ckpt-{step}\n".encode())
        state = json.dumps({"step": step, "loss": rng.random(), "pad": "x" * rng.randrange(2000)}).encode()
        write_file("trainer_state.json", state, trunc_existing=step > start_step + 1, chunks=False)
        line = json.dumps({"step": step, "loss": rng.random()}).encode() + b"\n"
        i = log.begin("close", path="metrics.jsonl", sha=sha(metrics + line))
        with open(os.path.join(mp, "metrics.jsonl"), "ab") as f:
            f.write(line)
        log.ack(i)
        metrics += line
        # Rotation: keep the newest `keep` checkpoints (ckpt-0 is the one the run resumed from).
        old = step - keep
        if old >= 0:
            unlink(f"ckpt-{old}")
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.5)  # an evaluation pause: uploads catch up


# ---------------------------------------------------------------------------------------------------------
# Replaying the log.

class Model:
    """The acknowledged state: path -> sha256 (None: acknowledged absent), plus, for the one operation in
    flight at the kill, the outcomes it may have had."""

    def __init__(self, seed_files):
        self.state = dict(seed_files)
        self.history = {p: [s] for p, s in seed_files.items()}
        self.tolerated = {}  # path -> extra states allowed (a truncate at open, before the close is acked)
        self.acks = 0
        self.pending = None
        self.trace = {}  # path -> the acknowledged operations on it, for the report

    def note(self, path, what):
        self.trace.setdefault(path, []).append(what)

    def how(self, path):
        steps = self.trace.get(path, ["(never acknowledged)"])[-4:]
        if steps[-1].startswith("renamed from "):  # show what the source went through
            src = steps[-1][len("renamed from "):]
            steps = [f"{src}: " + " > ".join(self.trace.get(src, [])[-4:-1])] + steps
        return " > ".join(steps)

    def apply(self, op):
        kind = op["op"]
        if kind in ("fsync", "close"):
            self.note(op["path"], f"{kind} {op['sha'][:8]}")
            self.state[op["path"]] = op["sha"]
            self.history.setdefault(op["path"], []).append(op["sha"])
            self.tolerated.pop(op["path"], None)
        elif kind == "rename":
            self.note(op["src"], f"renamed to {op['dst']}")
            self.note(op["dst"], f"renamed from {op['src']}")
            s = self.state.get(op["src"])
            self.state[op["dst"]] = s
            self.state[op["src"]] = None
            self.tolerated.pop(op["src"], None)
            self.tolerated.pop(op["dst"], None)
        elif kind == "unlink":
            self.note(op["path"], "unlink")
            self.state[op["path"]] = None
            self.tolerated.pop(op["path"], None)
        elif kind == "open_trunc":
            self.tolerated.setdefault(op["path"], set()).add(EMPTY)

    def replay(self, log_path):
        begun = {}
        with open(log_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec["e"] == "b":
                    begun[rec["i"]] = rec
                else:
                    op = begun.pop(rec["i"])
                    self.apply(op)
                    if op["op"] != "open_trunc":
                        self.acks += 1
        assert len(begun) <= 1, "the workload is sequential"
        self.pending = next(iter(begun.values()), None)

    def allowed(self):
        """path -> set of allowed final states (sha or None)."""
        paths = set(self.state) | set(self.tolerated)
        p = self.pending
        if p:
            paths |= {x for x in (p.get("path"), p.get("src"), p.get("dst")) if x}
        out = {}
        for path in paths:
            out[path] = {self.state.get(path)} | self.tolerated.get(path, set())
        if p and p["op"] in ("fsync", "close"):
            out[p["path"]].add(p["sha"])
        elif p and p["op"] == "unlink":
            out[p["path"]].add(None)
        elif p and p["op"] == "rename":
            out[p["src"]].add(None)
            out[p["dst"]].add(self.state.get(p["src"]))
        elif p and p["op"] == "open_trunc":
            out[p["path"]].add(EMPTY)
        return out

    def rename_pairs(self):
        """For a rename in flight: the allowed (src, dst) pairs; it must not be half done."""
        p = self.pending
        if not p or p["op"] != "rename":
            return None
        s, d = self.state.get(p["src"]), self.state.get(p["dst"])
        return {(s, d), (None, s)}


# ---------------------------------------------------------------------------------------------------------
# The driver.

class Server:
    def __init__(self, base):
        import boto3
        from botocore.config import Config
        self.dir = os.path.join(base, "seaweed")
        out = subprocess.run([sys.executable, os.path.join(HERE, "seaweed.py"), "start", "--dir", self.dir,
                              "--watch-pid", str(os.getpid()), "--json"], capture_output=True, text=True, check=True)
        self.info = json.loads(out.stdout)
        self.s3 = boto3.client("s3", endpoint_url=self.info["endpoint"], aws_access_key_id=self.info["access_key"],
                               aws_secret_access_key=self.info["secret_key"], region_name="us-east-1",
                               config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        e.update(AWS_ENDPOINT_URL=self.info["endpoint"], AWS_ACCESS_KEY_ID=self.info["access_key"],
                 AWS_SECRET_ACCESS_KEY=self.info["secret_key"], AWS_REGION="us-east-1",
                 AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        return e

    def stop(self):
        subprocess.run([sys.executable, os.path.join(HERE, "seaweed.py"), "stop", "--dir", self.dir],
                       capture_output=True)

    def objects(self, bucket):
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["ETag"]
        return out

    def get(self, bucket, key):
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def daemon_pids(mp):
    """The daemons serving mount point mp: processes whose arguments are `... mount URL mp ...`."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv[1:3] and mp.encode() in argv and "ckptfs" in os.path.basename(argv[0].decode(errors="replace")):
            pids.append(int(d))
    return pids


def wait_until(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Observer(threading.Thread):
    """Polls the bucket; a snapshot holds a loadable checkpoint if some ckpt-N object loads. Objects are
    loaded once per ETag. A snapshot without one is taken again at once; both failing counts a moment."""

    def __init__(self, server, bucket):
        super().__init__(daemon=True)
        self.server, self.bucket = server, bucket
        self.good, self.bad = set(), set()
        self.stop_flag = threading.Event()
        self.snapshots = 0
        self.moments = []  # (time, keys) of snapshots with no loadable checkpoint

    def has_checkpoint(self):
        objs = self.server.objects(self.bucket)
        cks = {k: e for k, e in objs.items() if CKPT_RE.match(k)}
        if any(e in self.good for e in cks.values()):
            return True, sorted(cks)
        for k, e in cks.items():
            if e in self.bad:
                continue
            data = self.server.get(self.bucket, k)
            if data is not None and loadable(data):
                self.good.add(e)
                return True, sorted(cks)
            if data is not None:
                self.bad.add(e)
        return False, sorted(cks)

    def check(self):
        self.snapshots += 1
        ok, keys = self.has_checkpoint()
        if not ok:
            ok, keys = self.has_checkpoint()
            if not ok:
                self.moments.append((time.time(), keys))
        return ok

    def run(self):
        while not self.stop_flag.wait(0.25):
            try:
                self.check()
            except Exception as e:  # the server is busy: try again next round
                print(f"  observer: {e}", file=sys.stderr)


def run_trial(args, server, base, k, seed):
    rng = random.Random(seed)
    res = {"trial": k, "seed": seed, "acks": 0, "lost": 0, "wrong": 0, "resurrected": 0, "unexpected": 0,
           "mpu": 0, "no_ckpt": 0, "view": 0, "flush": "", "quarantined": 0, "notes": []}
    bucket = f"crash-{uuid.uuid4().hex[:10]}"
    server.s3.create_bucket(Bucket=bucket)
    tdir = os.path.join(base, f"trial-{k}")
    mp, cache, log_path = os.path.join(tdir, "mnt"), os.path.join(tdir, "cache"), os.path.join(tdir, "ops.log")
    os.makedirs(mp)
    opts = []
    delay = rng.choice(["0", "0.2", None])
    if delay is not None:
        opts += ["--upload-delay", delay]
    if rng.random() < 0.25:
        opts.append("--upload-while-writing")
    res["opts"] = " ".join(opts) or "defaults"
    env = server.env()

    def ckptfs(*a, timeout=60):
        return subprocess.run([args.bin, *a], env=env, capture_output=True, text=True, timeout=timeout)

    # A run resuming from ckpt-0, already in S3.
    ck0 = make_checkpoint(rng, 0, 3 * MiB)
    server.s3.put_object(Bucket=bucket, Key="ckpt-0", Body=ck0)
    model = Model({"ckpt-0": sha(ck0)})

    r = ckptfs("mount", f"s3://{bucket}", mp, "--cache-dir", cache, *opts)
    if r.returncode != 0:
        res["flush"] = "mount failed"
        res["notes"].append(r.stderr.strip()[-300:])
        return res
    observer = Observer(server, bucket)
    observer.start()
    wl = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--workload", mp, log_path, str(seed), "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    kill_at = rng.uniform(0.3, args.max_kill)
    if rng.random() < 0.3:
        # Aim at the window after a delete of a file whose upload may be running (a scratch save thrown
        # away): kill 0 to 1.2 s after the first such unlink returns, or at the drawn time if none comes.
        res["aim"] = "after scratch unlink"
        after = None
        while time.time() - t0 < args.max_kill and after is None:
            time.sleep(0.05)
            try:
                with open(log_path) as f:
                    text = f.read()
            except OSError:
                continue
            m = re.search(r'"i": (\d+), "op": "unlink", "path": "scratch-', text)
            if m and re.search(r'"e": "a", "i": %s,' % m.group(1), text):
                after = time.time()
        if after is not None:
            kill_at = after - t0 + rng.uniform(0, 1.2)
    res["kill_at"] = kill_at
    time.sleep(max(0.0, t0 + kill_at - time.time()))
    pids = daemon_pids(mp)
    if not pids:
        res["notes"].append("no daemon found to kill")
    for p in pids:
        os.kill(p, signal.SIGKILL)
    observer.stop_flag.set()
    # The trainer dies of ENOTCONN; give it a moment, then make sure.
    try:
        wl.wait(timeout=10)
    except subprocess.TimeoutExpired:
        wl.kill()
        wl.wait()
        res["notes"].append("workload hung after the kill")
    observer.join(timeout=30)
    wait_until(lambda: not daemon_pids(mp), 10)
    # S3 frozen at the kill: what a new machine would resume from.
    time.sleep(0.3)
    if not observer.check():
        res["notes"].append(f"at the kill S3 held no loadable checkpoint: {observer.moments[-1][1]}")
    res["no_ckpt"] = len(observer.moments)
    res["snapshots"] = observer.snapshots
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    wait_until(lambda: not is_mounted(mp), 10)

    model.replay(log_path)
    res["acks"] = model.acks
    res["inflight"] = (model.pending or {}).get("op", "-")

    # Recover: remount with the same cache, flush, read the status, compare the mount's view, unmount.
    r = ckptfs("mount", f"s3://{bucket}", mp, "--cache-dir", cache, *opts)
    if r.returncode != 0:
        res["flush"] = "remount failed"
        res["notes"].append(r.stderr.strip()[-300:])
        return res
    r = ckptfs("flush", mp, "--timeout", str(args.flush_timeout), timeout=args.flush_timeout + 30)
    res["flush"] = "ok" if r.returncode == 0 else f"exit {r.returncode}"
    if r.returncode != 0:
        res["notes"].append("flush: " + (r.stdout + r.stderr).strip().replace("\n", " | ")[-400:])
    st = ckptfs("status", mp, "--json")
    try:
        wb = json.loads(st.stdout).get("writeBack", {})
        res["quarantined"] = len(wb.get("quarantined", []))
        if wb.get("quarantined"):
            res["notes"].append(f"status quarantined: {json.dumps(wb['quarantined'])[:400]}")
        res["recovered"] = wb.get("recovered", 0)
        if wb.get("failures"):
            res["notes"].append(f"status failures: {json.dumps(wb['failures'])[:300]}")
    except ValueError:
        res["notes"].append("status unreadable")
    allowed = model.allowed()
    objs = server.objects(bucket)
    s3_state = {}
    for key in objs:
        data = server.get(bucket, key)
        s3_state[key] = sha(data) if data is not None else None
    # The mount's view after recovery must match S3.
    for key, s in s3_state.items():
        try:
            with open(os.path.join(mp, key), "rb") as f:
                v = sha(f.read())
        except OSError as e:
            v = f"error {e.errno}"
        if v != s:
            res["view"] += 1
            res["notes"].append(f"view: {key} reads other bytes on the mount than in S3 ({v[:12]} vs {s[:12]})")
    for name in os.listdir(mp):
        if name not in s3_state:
            res["view"] += 1
            res["notes"].append(f"view: {name} is on the mount but not in S3")
    r = ckptfs("unmount", mp, timeout=180)
    if r.returncode != 0:
        res["notes"].append("unmount: " + r.stderr.strip()[-200:])
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        for p in daemon_pids(mp):
            os.kill(p, signal.SIGKILL)

    for path, ok in sorted(allowed.items()):
        got = s3_state.get(path)
        if got in ok:
            continue
        if got is not None and path in model.state and model.state[path] is None:
            res["resurrected"] += 1
            res["notes"].append(f"resurrected: {path} (deleted or renamed away, acknowledged) is in S3 [{model.how(path)}]")
        elif got is None:
            res["lost"] += 1
            res["notes"].append(f"lost: {path} (acknowledged) is missing from S3 [{model.how(path)}]")
        elif got in model.history.get(path, []):
            res["lost"] += 1
            res["notes"].append(f"lost: {path} holds an older acknowledged version, not the last one [{model.how(path)}]")
        else:
            res["wrong"] += 1
            res["notes"].append(f"wrong: {path} holds bytes that were never acknowledged [{model.how(path)}]")
    pairs = model.rename_pairs()
    if pairs is not None:
        p = model.pending
        got = (s3_state.get(p["src"]), s3_state.get(p["dst"]))
        if got not in pairs:
            res["unexpected"] += 1
            left = " and ".join(n for n, v in ((p["src"], got[0]), (p["dst"], got[1])) if v) or "neither name"
            res["notes"].append(f"half rename: {p['src']} -> {p['dst']} was in flight; S3 holds {left}")
    for key in s3_state:
        if key not in allowed:
            res["unexpected"] += 1
            res["notes"].append(f"unexpected: {key} in S3, never acknowledged")
    uploads = server.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    res["mpu"] = len(uploads)
    if uploads:
        res["notes"].append("open multipart uploads: " + ", ".join(u["Key"] for u in uploads))
    if not args.keep:
        shutil.rmtree(tdir, ignore_errors=True)
    return res


VIOLATIONS = ["lost", "wrong", "resurrected", "unexpected", "mpu", "no_ckpt", "view"]


def failed(res):
    return any(res[v] for v in VIOLATIONS) or res["flush"] != "ok"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--bin", default=shutil.which("ckptfs") or "ckptfs", help="the ckptfs binary")
    ap.add_argument("--seed", type=int, default=None, help="seed of the whole run (printed; trial K uses seed+K)")
    ap.add_argument("--only", type=int, default=None, help="run only trial K of the run (with --seed)")
    ap.add_argument("--max-kill", type=float, default=7.0, help="latest kill time in seconds after the start")
    ap.add_argument("--flush-timeout", type=int, default=40)
    ap.add_argument("--keep", action="store_true", help="keep each trial's cache, log and mount point")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--workload", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        mp, log_path, seed, start = args.workload
        try:
            workload(mp, log_path, int(seed), int(start))
        except OSError as e:
            print(f"workload stopped: {e}", file=sys.stderr)
            sys.exit(1)
        return
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        sys.exit("crash_trials: needs fusermount3 (fuse3) or root")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"crash_trials: {args.trials} trials, seed {seed}, binary {args.bin}")
    base = tempfile.mkdtemp(prefix="ckptfs-crash-")
    server = Server(base)
    results = []
    try:
        ks = [args.only] if args.only is not None else range(args.trials)
        for k in ks:
            t0 = time.time()
            res = run_trial(args, server, base, k, seed + k)
            res["secs"] = round(time.time() - t0, 1)
            results.append(res)
            mark = "FAIL" if failed(res) else "ok"
            print(f"trial {k:3d} seed {seed + k}: {mark} ({res['acks']} acks, kill at {res.get('kill_at', 0):.2f}s, "
                  f"in flight: {res.get('inflight', '-')}, {res['secs']} s)", flush=True)
            for n in res["notes"]:
                print(f"    {n}", flush=True)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    cols = ["trial", "opts", "kill_at", "inflight", "acks", *VIOLATIONS, "flush", "quarantined"]
    print()
    print(" | ".join(f"{c:>11}" if c != "opts" else f"{c:<36}" for c in cols))
    for r in results:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if c == "kill_at":
                v = (f"{v:.2f}" if v != "" else "") + ("*" if r.get("aim") else "")
            cells.append(f"{v:<36}" if c == "opts" else f"{v!s:>11}")
        print(" | ".join(cells))
    print("(* killed 0 to 1.2 s after a scratch file's delete returned)")
    tot = {v: sum(r[v] for r in results) for v in VIOLATIONS}
    print(f"\ntotals: {len(results)} trials, {sum(r['acks'] for r in results)} acknowledged operations, "
          + ", ".join(f"{v} {tot[v]}" for v in VIOLATIONS)
          + f", flush failures {sum(1 for r in results if r['flush'] != 'ok')}"
          + f", quarantined (reported by status) {sum(r['quarantined'] for r in results)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": seed, "bin": args.bin, "results": results}, f, indent=1)
    nfail = sum(1 for r in results if failed(r))
    print(f"{len(results) - nfail} passed, {nfail} failed")
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    main()
