"""The load test of issue 15 (bench/load.py), short: 16 unpaced writers and 16 readers through one mount for
45 s on a 512 MiB cache disk of its own, against the suite's SeaweedFS. The script samples the daemon every
second and checks every byte that should be in S3 afterwards; this test holds it to the same goals as the
10-minute run in bench/README.md, and to having exercised what they are about (the dirty bound reached,
writers held back, reads and saves done)."""
import json
import os
import subprocess
import sys

from conftest import ROOT, ckptfs_bin

SECONDS = 45


def test_sixteen_unpaced_writers_and_sixteen_readers_stay_within_bounds_and_lose_nothing(server, bucket, tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "load.py"), "--seconds", str(SECONDS),
                        "--bin", ckptfs_bin(), "--endpoint-url", server.endpoint, "--bucket", bucket,
                        "--cache-disk-size", "512MiB", "--dataset-mib", "256", "--sizes", "1,4,16", "--min-free", "1GiB",
                        "--work-dir", str(tmp_path / "work"), "--results-dir", str(out), "--output", "load"],
                       env=server.env(), capture_output=True, text=True, timeout=SECONDS + 900)
    print(r.stdout)
    assert os.path.exists(out / "load.json"), r.stderr[-3000:]
    res = json.loads((out / "load.json").read_text())
    missed = [g for g in res["goals"] if not g["met"]]
    assert not missed, f"goals missed: {missed}\n{r.stdout}\nerrors: {res['error_samples']}, lost: {res['lost_keys']}, " \
                       f"unexpected: {res['unexpected_keys']}"
    assert r.returncode == 0, r.stderr[-3000:]
    # What the goals are about happened: samples every second, saves and reads, the bound reached and held.
    assert res["samples"] >= SECONDS * 0.8, res["samples"]
    assert res["saves"] >= 16 and res["reads"] >= 16, (res["saves"], res["reads"])
    assert res["max_held_writers"] >= 1, "the dirty bound was never reached: the test did not load the mount"
    assert res["checked_objects"] >= 32 + 16, res["checked_objects"]  # the shards, and a checkpoint or more per writer
    lines = (out / "load.csv").read_text().splitlines()
    assert len(lines) == res["samples"] + 1
