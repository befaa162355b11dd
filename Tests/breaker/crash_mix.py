#!/usr/bin/env python3
"""Adversarial crash trials (helper tool, not part of CI): kill -9 the daemon during a mixed workload that the
crash_trials script does not cover (in-place pwrite of objects only in S3, path truncate, O_TRUNC rewrite,
append with fsync from a long-lived descriptor, directory renames with local and remote files, remote file
renames, unlink, mkdir/rmdir), with random mount options, then:
  1. remount with the SAME cache dir, compare the mount with the acknowledged state, `ckptfs flush`, unmount;
  2. check S3 (boto3) against the acknowledged state; every object's bytes must be bytes once acknowledged
     under that name (history), nothing deleted back, no open multipart upload;
  3. remount with a NEW EMPTY cache dir and compare every file's sha256 through the mount.
At the kill moment S3 is snapshotted too: every object there must be bytes acknowledged under its key at some
point (no mixed or never-acknowledged bytes).

    python3 Tests/breaker/crash_mix.py --bin /tmp/breaker-bin/ckptfs --server /tmp/breaker/sw/server.json \
        --trials 20 --seed 1
"""
import argparse, hashlib, json, os, random, signal, subprocess, sys, time, uuid, shutil
import boto3
from botocore.config import Config

MiB = 1 << 20


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------ workload
def workload(mnt, logpath, seed, nops):
    rng = random.Random(seed)
    log = open(logpath, "a", buffering=1)

    def rec(**kw):
        log.write(json.dumps(kw) + "\n")
        log.flush()
        os.fsync(log.fileno())

    state = {}  # rel path -> bytes (acknowledged)
    for dp, dn, fn in os.walk(mnt):
        for f in fn:
            p = os.path.join(dp, f)
            state[os.path.relpath(p, mnt)] = open(p, "rb").read()

    def P(r):
        return os.path.join(mnt, r)

    applog = None
    applog_content = b""
    i = 0
    step = 0
    while i < nops:
        i += 1
        op = rng.choice(["save", "save", "inplace", "otrunc", "append", "applog", "truncate", "dirrename",
                         "remoterename", "unlink", "mkdirs", "rotate"])
        files = sorted(state)
        changes = {}
        try:
            if op == "save":
                step += 1
                data = rng.randbytes(rng.choice([1000, 300_000, 2 * MiB + 17, 17 * MiB + 5]))
                tmp = f"ckpt-{step}.pt.tmp"
                final = f"ckpt-{step}.pt"
                rec(i=i, op="savetmp", phase="start", changes={tmp: sha(data)})
                with open(P(tmp), "wb") as f:
                    f.write(data)
                    f.flush()
                    if rng.random() < 0.5:
                        os.fsync(f.fileno())
                state[tmp] = data
                rec(i=i, op="savetmp", phase="done")
                i += 1
                rec(i=i, op="replace", phase="start", changes={tmp: None, final: sha(data)})
                os.replace(P(tmp), P(final))
                state[final] = state.pop(tmp)
                rec(i=i, op="replace", phase="done")
                i += 1
                # last.pt: a copy via tmp + replace
                rec(i=i, op="savetmp", phase="start", changes={"last.pt.tmp": sha(data)})
                with open(P("last.pt.tmp"), "wb") as f:
                    f.write(data)
                state["last.pt.tmp"] = data
                rec(i=i, op="savetmp", phase="done")
                i += 1
                changes = {"last.pt.tmp": None, "last.pt": sha(data)}
                rec(i=i, op="replace", phase="start", changes=changes)
                os.replace(P("last.pt.tmp"), P("last.pt"))
                state["last.pt"] = state.pop("last.pt.tmp")
            elif op == "rotate":
                ck = sorted([f for f in files if f.startswith("ckpt-")], key=lambda s: int(s.split("-")[1].split(".")[0]))
                if len(ck) < 3:
                    continue
                victim = ck[0]
                changes = {victim: None}
                rec(i=i, op=op, phase="start", changes=changes)
                os.unlink(P(victim))
                del state[victim]
            elif op == "inplace":
                cands = [f for f in files if f != "train.log"]
                if not cands:
                    continue
                name = rng.choice(cands)
                old = state[name]
                if len(old) == 0:
                    continue
                new = bytearray(old)
                patches = []
                for _ in range(rng.randint(1, 4)):
                    off = rng.randrange(0, len(old) + 4096)
                    ln = rng.randint(1, 200_000)
                    patches.append((off, rng.randbytes(ln)))
                for off, b in patches:
                    if off > len(new):
                        new.extend(b"\0" * (off - len(new)))
                    new[off:off + len(b)] = b
                new = bytes(new)
                changes = {name: sha(new)}
                rec(i=i, op=op, phase="start", changes=changes)
                fd = os.open(P(name), os.O_RDWR)
                try:
                    for off, b in patches:
                        os.pwrite(fd, b, off)
                    if rng.random() < 0.3:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                state[name] = new
            elif op == "otrunc":
                name = rng.choice(["trainer_state.json", "model.keras", "weights.h5"])
                data = rng.randbytes(rng.choice([200, 50_000, 5 * MiB]))
                changes = {name: sha(data)}
                rec(i=i, op=op, phase="start", changes=changes)
                with open(P(name), "wb") as f:
                    f.write(data)
                state[name] = data
            elif op == "append":
                name = "metrics.jsonl"
                line = json.dumps({"step": i, "pad": rng.randbytes(rng.randint(1, 3000)).hex()}).encode() + b"\n"
                new = state.get(name, b"") + line
                changes = {name: sha(new)}
                rec(i=i, op=op, phase="start", changes=changes)
                with open(P(name), "ab") as f:
                    f.write(line)
                state[name] = new
            elif op == "applog":
                name = "train.log"
                if applog is None:
                    if name in state:
                        applog_content = state[name]
                    applog = open(P(name), "ab")
                line = (f"{i} " + "x" * rng.randint(1, 5000) + "\n").encode()
                applog.write(line)
                applog.flush()
                applog_content += line
                if rng.random() < 0.5:
                    changes = {name: sha(applog_content)}
                    rec(i=i, op=op, phase="start", changes=changes)
                    os.fsync(applog.fileno())
                    state[name] = applog_content
                else:
                    continue
            elif op == "truncate":
                cands = [f for f in files if f != "train.log"]
                if not cands:
                    continue
                name = rng.choice(cands)
                old = state[name]
                n = rng.choice([0, len(old) // 2, len(old) + 10_000, rng.randrange(0, len(old) + 1)])
                new = old[:n] + b"\0" * max(0, n - len(old))
                changes = {name: sha(new)}
                rec(i=i, op=op, phase="start", changes=changes)
                os.truncate(P(name), n)
                state[name] = new
            elif op == "dirrename":
                # a directory with some files (some local, some already uploaded), renamed
                d = f"run{rng.randint(0, 3)}"
                if not os.path.isdir(P(d)):
                    os.mkdir(P(d))
                    rec(i=i, op="mkdir", phase="start", changes={})
                    rec(i=i, op="mkdir", phase="done")
                    i += 1
                # add a file
                nm = f"{d}/f{i}.bin"
                data = rng.randbytes(rng.choice([10, 100_000, 3 * MiB]))
                rec(i=i, op="dirfile", phase="start", changes={nm: sha(data)})
                with open(P(nm), "wb") as f:
                    f.write(data)
                state[nm] = data
                rec(i=i, op="dirfile", phase="done")
                i += 1
                if rng.random() < 0.5:
                    dst = f"run{rng.randint(4, 9)}"
                    if os.path.exists(P(dst)):
                        continue
                    moved = {k: v for k, v in state.items() if k.startswith(d + "/")}
                    changes = {}
                    for k, v in moved.items():
                        changes[k] = None
                        changes[dst + k[len(d):]] = sha(v)
                    rec(i=i, op="dirrename", phase="start", changes=changes)
                    os.rename(P(d), P(dst))
                    for k, v in moved.items():
                        del state[k]
                        state[dst + k[len(d):]] = v
                else:
                    continue
            elif op == "remoterename":
                cands = [f for f in files if "/" not in f and f not in ("train.log", "last.pt")]
                if not cands:
                    continue
                name = rng.choice(cands)
                dst = rng.choice([f"moved-{i}.bin", "last.pt", "weights.h5"])
                if dst == name:
                    continue
                changes = {name: None, dst: sha(state[name])}
                rec(i=i, op=op, phase="start", changes=changes)
                os.rename(P(name), P(dst))
                state[dst] = state.pop(name)
            elif op == "unlink":
                cands = [f for f in files if f not in ("train.log",)]
                if not cands:
                    continue
                name = rng.choice(cands)
                changes = {name: None}
                rec(i=i, op=op, phase="start", changes=changes)
                os.unlink(P(name))
                del state[name]
            elif op == "mkdirs":
                d = f"empty{rng.randint(0, 5)}"
                if os.path.isdir(P(d)):
                    rec(i=i, op="rmdir", phase="start", changes={})
                    try:
                        os.rmdir(P(d))
                    except OSError:
                        pass
                else:
                    rec(i=i, op="mkdir", phase="start", changes={})
                    os.mkdir(P(d))
            rec(i=i, op=op, phase="done")
        except OSError as e:
            rec(i=i, op=op, phase="error", errno=e.errno, msg=str(e))
            if e.errno in (107, 103, 5, 30):  # ENOTCONN, ECONNABORTED, EIO, EROFS: daemon gone
                return
            raise
    # The workload ran to its end before the kill: closing the log acknowledges what was written to it since its
    # last fsync (close() is an acknowledgement), which the check must count (it called such bytes "never
    # acknowledged" when the process's exit closed the log unrecorded).
    if applog is not None:
        rec(i=nops + 1, op="applog-close", phase="start", changes={"train.log": sha(applog_content)})
        applog.close()
        rec(i=nops + 1, op="applog-close", phase="done")


# ------------------------------------------------------------------------------------------------ harness
class H:
    def __init__(self, a):
        self.a = a
        self.info = json.load(open(a.server))
        self.s3 = boto3.client("s3", endpoint_url=self.info["endpoint"], aws_access_key_id=self.info["access_key"],
                               aws_secret_access_key=self.info["secret_key"], region_name="us-east-1",
                               config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(AWS_ENDPOINT_URL=self.info["endpoint"], AWS_ACCESS_KEY_ID=self.info["access_key"],
                        AWS_SECRET_ACCESS_KEY=self.info["secret_key"], AWS_REGION="us-east-1",
                        AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")

    def run(self, *args, timeout=300):
        return subprocess.run([self.a.bin, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def mount(self, url, mp, cache, extra):
        r = self.run("mount", url, mp, "--cache-dir", cache, "--log-level", "info", *extra)
        if r.returncode != 0:
            raise RuntimeError(f"mount failed: {r.stderr}")
        pid = subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True, text=True).stdout.split()
        return int(pid[0])

    def objects(self, bucket, prefix):
        out = {}
        pg = self.s3.get_paginator("list_objects_v2")
        for page in pg.paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                k = o["Key"][len(prefix):]
                if k.endswith("/"):
                    continue
                for attempt in range(5):
                    try:
                        out[k] = sha(self.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
                        break
                    except self.s3.exceptions.NoSuchKey:
                        break
                    except Exception:
                        time.sleep(0.2)
        return out

    def mount_view(self, mp):
        out = {}
        for dp, dn, fn in os.walk(mp):
            for f in fn:
                p = os.path.join(dp, f)
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, mp)] = sha(fh.read())
        return out


def replay(logpath, initial):
    """Acknowledged state, the in-flight op's changes, and every sha each key ever held acknowledged."""
    state = dict(initial)
    hist = {k: {v} for k, v in initial.items()}
    pending = None
    for line in open(logpath):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r["phase"] == "start":
            pending = r
            for k, v in r["changes"].items():
                if v is not None:
                    hist.setdefault(k, set()).add(v)
        elif r["phase"] == "done" and pending is not None and pending["i"] == r["i"]:
            for k, v in pending["changes"].items():
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v
            pending = None
        elif r["phase"] == "error":
            pass  # stays pending: it may or may not have happened
    return state, (pending["changes"] if pending else {}), hist


def compare(name, got, state, inflight):
    bad = []
    keys = set(got) | set(state) | set(inflight)
    for k in sorted(keys):
        allowed = {state.get(k)}
        if k in inflight:
            allowed.add(inflight[k])
        if got.get(k) not in allowed:
            kind = "lost" if got.get(k) is None else ("resurrected" if state.get(k) is None and k not in inflight else "wrong")
            bad.append(f"{name}: {kind} {k}: got {str(got.get(k))[:12]} allowed {[str(x)[:12] for x in allowed]}")
    return bad


def trial(h, n, rng, a):
    base = f"/tmp/breaker/crash/{n}"
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    mp = f"{base}/mnt"
    os.makedirs(mp)
    prefix = f"crash-{a.seed}-{n}-{uuid.uuid4().hex[:6]}/"
    bucket = "ckpt"
    # seed S3-only objects
    initial = {}
    for j in range(rng.randint(1, 4)):
        data = rng.randbytes(rng.choice([5000, 1 * MiB + 3, 6 * MiB, 20 * MiB]))
        h.s3.put_object(Bucket=bucket, Key=prefix + f"seed{j}.bin", Body=data)
        initial[f"seed{j}.bin"] = sha(data)
    extra = []
    extra += rng.choice([[], ["--upload-delay", "0"], ["--upload-delay", "0.2"], ["--upload-delay", "2"]])
    if rng.random() < 0.3:
        extra.append("--keep-every-version")
    if rng.random() < 0.3:
        extra.append("--upload-while-writing")
    if rng.random() < 0.2:
        extra += ["--fsync", "local"]
    if rng.random() < 0.3:
        extra += ["--metadata-ttl", "1"]
    url = f"s3://{bucket}/{prefix.rstrip('/')}"
    cache = f"{base}/cache"
    pid = h.mount(url, mp, cache, extra)
    logpath = f"{base}/ops.jsonl"
    wseed = rng.randrange(1 << 30)
    w = subprocess.Popen([sys.executable, __file__, "--workload", mp, logpath, str(wseed), str(a.ops)],
                         stdout=open(f"{base}/workload.out", "w"), stderr=subprocess.STDOUT)
    delay = rng.uniform(0.3, a.max_kill)
    t0 = time.time()
    while time.time() - t0 < delay and w.poll() is None:
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    problems = []
    # S3 snapshot right at the kill
    snap = h.objects(bucket, prefix)
    try:
        w.wait(timeout=60)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()
        problems.append("workload hung after kill")
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    state, inflight, hist = replay(logpath, initial)
    for k, v in snap.items():
        if v not in hist.get(k, set()):
            problems.append(f"snapshot: {k} holds bytes never acknowledged under it ({v[:12]})")
    # 1. remount same cache
    try:
        pid2 = h.mount(url, mp, cache, extra)
    except RuntimeError as e:
        return [f"remount failed: {e}"], extra, wseed, delay
    view = h.mount_view(mp)
    problems += compare("remount-view", view, state, inflight)
    r = h.run("flush", mp, "--timeout", "120")
    if r.returncode != 0:
        problems.append(f"flush failed: {r.stdout} {r.stderr}")
    st = h.run("status", mp, "--json")
    try:
        sj = json.loads(st.stdout)
        if sj.get("quarantined") or sj.get("failures"):
            problems.append(f"status: quarantined/failures {sj.get('quarantined')} {sj.get('failures')}")
    except Exception:
        pass
    s3now = h.objects(bucket, prefix)
    # S3 must equal the mount's view after flush
    if s3now != view:
        problems += [p.replace("s3-vs-view", "s3-vs-view") for p in compare("s3-vs-view", s3now, view, {})]
    r = h.run("unmount", mp)
    if r.returncode != 0:
        problems.append(f"unmount failed: {r.stderr}")
    problems += compare("s3", s3now, state, inflight)
    mpus = h.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    if mpus:
        problems.append(f"{len(mpus)} multipart uploads left open")
    # 3. empty cache
    cache2 = f"{base}/cache2"
    try:
        h.mount(url, mp, cache2, [])
        view2 = h.mount_view(mp)
        if view2 != s3now:
            problems += compare("empty-cache-view", view2, s3now, {})
        h.run("unmount", mp)
    except RuntimeError as e:
        problems.append(f"empty-cache mount failed: {e}")
    nack = sum(1 for l in open(logpath) if '"done"' in l)
    return problems, extra, wseed, delay, nack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", nargs=4)
    ap.add_argument("--bin")
    ap.add_argument("--server")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--max-kill", type=float, default=8.0)
    ap.add_argument("--only", type=int)
    a = ap.parse_args()
    if a.workload:
        mnt, logpath, seed, nops = a.workload
        workload(mnt, logpath, int(seed), int(nops))
        return
    h = H(a)
    failed = 0
    total_ack = 0
    for n in range(a.trials):
        rng = random.Random(a.seed * 1000 + n)
        if a.only is not None and n != a.only:
            continue
        t = time.time()
        res = trial(h, n, rng, a)
        problems, extra, wseed, delay = res[:4]
        nack = res[4] if len(res) > 4 else 0
        total_ack += nack
        status = "ok" if not problems else "FAIL"
        failed += bool(problems)
        print(f"trial {n} {status} opts={extra} wseed={wseed} kill@{delay:.2f}s acked={nack} ({time.time()-t:.0f}s)", flush=True)
        for p in problems:
            print("   ", p, flush=True)
    print(f"{a.trials - failed} passed, {failed} failed, {total_ack} acknowledged ops")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
