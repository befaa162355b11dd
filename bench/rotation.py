#!/usr/bin/env python3
"""Checkpoint rotation through a mount (Keras ModelCheckpoint, TF CheckpointManager): each save writes
`ckpt.tmp`, renames it to `ckpt-NNNN` and removes the save three steps older; then `ckptfs flush`.

    python3 scripts/seaweed.py start --dir /tmp/sw --bucket ckpt --json > /tmp/sw.json
    python3 bench/rotation.py /tmp/sw.json --saves 200 --size 65536 --rounds 3 BIN [BIN ...]

Binaries alternate each round, each against a fresh prefix and cache. Prints per binary the medians of the
loop's seconds, the flush's seconds and the server's DELETE requests (SeaweedFS's metrics endpoint, from the
server JSON), after checking that S3 holds exactly the newest three saves byte-exact (boto3) and that a
remount with an empty cache reads them back identical."""
import argparse, hashlib, json, os, statistics, subprocess, tempfile, time, urllib.request

import boto3

p = argparse.ArgumentParser()
p.add_argument("server")
p.add_argument("bins", nargs="+")
p.add_argument("--saves", type=int, default=200)
p.add_argument("--size", type=int, default=65536)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--bucket", default="ckpt")
a = p.parse_args()
sw = json.load(open(a.server))
env = dict(os.environ, AWS_ACCESS_KEY_ID=sw["access_key"], AWS_SECRET_ACCESS_KEY=sw["secret_key"], AWS_REGION=sw["region"])
s3 = boto3.client("s3", endpoint_url=sw["endpoint"], aws_access_key_id=sw["access_key"],
                  aws_secret_access_key=sw["secret_key"], region_name=sw["region"])


def deletes():
    text = urllib.request.urlopen(sw["metrics"]).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith("SeaweedFS_s3_request_total") and 'type="DELETE"' in l)


def run(binary):
    prefix = f"rotation-{time.time_ns()}"

    def mount(cache):
        mp = tempfile.mkdtemp(prefix="rot-mp")
        subprocess.run([binary, "mount", f"s3://{a.bucket}/{prefix}", mp, "--endpoint-url", sw["endpoint"],
                        "--cache-dir", cache], env=env, check=True, stdout=subprocess.DEVNULL)
        return mp

    mp = mount(tempfile.mkdtemp(prefix="rot-cache"))
    kept = {}
    before = deletes()
    t0 = time.perf_counter()
    for i in range(a.saves):
        data = os.urandom(a.size)
        with open(f"{mp}/ckpt.tmp", "wb") as f:
            f.write(data)
        os.rename(f"{mp}/ckpt.tmp", f"{mp}/ckpt-{i:04}")
        kept[f"ckpt-{i:04}"] = data
        if i >= 3:
            os.unlink(f"{mp}/ckpt-{i - 3:04}")
            del kept[f"ckpt-{i - 3:04}"]
    t1 = time.perf_counter()
    subprocess.run([binary, "flush", mp], env=env, check=True)
    t2 = time.perf_counter()
    sent = deletes() - before
    listed = s3.list_objects_v2(Bucket=a.bucket, Prefix=prefix + "/").get("Contents", [])
    assert sorted(o["Key"].split("/", 1)[1] for o in listed) == sorted(kept), listed
    for k, d in kept.items():
        assert s3.get_object(Bucket=a.bucket, Key=f"{prefix}/{k}")["Body"].read() == d, k
    subprocess.run([binary, "unmount", mp], env=env, check=True)
    mp = mount(tempfile.mkdtemp(prefix="rot-cache"))
    for k, d in kept.items():
        with open(f"{mp}/{k}", "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(d).digest(), k
    subprocess.run([binary, "unmount", mp], env=env, check=True)
    return t1 - t0, t2 - t1, sent


results = {b: [] for b in a.bins}
for r in range(a.rounds):
    for b in a.bins:
        results[b].append(run(b))
for b, rs in results.items():
    loop, flush, sent = (statistics.median(x) for x in zip(*rs))
    print(json.dumps({"bin": b, "saves": a.saves, "size": a.size, "rounds": a.rounds, "loop_s": round(loop, 3),
                      "flush_s": round(flush, 3), "server_deletes": int(sent),
                      "per_round": [[round(x, 3) for x in r] for r in rs]}))
