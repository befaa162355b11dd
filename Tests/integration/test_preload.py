"""`ckptfs preload` against real mounts of a real S3 server: what it fetches (counted by the server and by the
fault proxy), that reads through the mount then need no GET, sharing by rank, the cache bound, interrupt and
resume, `--check`, `--evict` and `status`."""
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import wait_until
from test_metrics import Scraper
from test_mount_read import file_sha, sha

ODD_NAMES = ["with space.bin", "plus+sign", "percent%41", "tilde~", "ünïcødé/ファイル.pt", "deep/a/b/c/model.safetensors",
             "sym!$&'()*,;=@"]


def upload_many(server, bucket, prefix, files, tmp_path):
    """Puts {name: bytes} under `prefix` with s5cmd (thousands of small files in seconds)."""
    src = tmp_path / ("src-" + prefix.strip("/").replace("/", "-"))
    for name, data in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    r = subprocess.run(["s5cmd", "--endpoint-url", server.endpoint, "cp", str(src) + "/*", f"s3://{bucket}/{prefix}"],
                       env=server.env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def preload(mounts, *args, env=None, timeout=300):
    return mounts.run("preload", *args, env=env, timeout=timeout)


def summary(r):
    """The --json summary on stdout."""
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_preloaded_prefix_reads_through_the_mount_with_no_get(server, bucket, mounts, tmp_path):
    rng = random.Random(16)
    small = {f"small/s-{i:04d}.bin": rng.randbytes(rng.randrange(1, 20_000)) for i in range(2000)}
    upload_many(server, bucket, "data/", small, tmp_path)
    objects = {"data/" + k: v for k, v in small.items()}
    for name in ODD_NAMES:
        objects["data/odd/" + name] = rng.randbytes(rng.randrange(1, 300_000))
    objects["data/empty-1"] = b""
    objects["data/odd/empty 2"] = b""
    objects["data/large/checkpoint.bin"] = rng.randbytes(100 * 1024 * 1024 + 5)
    for k, v in objects.items():
        if not k.startswith("data/small/"):
            server.s3.put_object(Bucket=bucket, Key=k, Body=v)
    server.s3.put_object(Bucket=bucket, Key="elsewhere.bin", Body=b"not under data/")
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--cache-size", "1GiB")
    gets_before = server.settled(lambda: server.gets(bucket))
    r = preload(mounts, os.path.join(mp, "data"), "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    total = sum(len(v) for v in objects.values())
    assert s["plan"]["files"] == len(objects) and s["plan"]["bytes"] == total
    assert s["progress"]["state"] == "done"
    assert s["progress"]["filesDone"] == len(objects)
    assert s["progress"]["bytesFetched"] == total
    assert "done:" in r.stderr and f"{len(objects):,} file(s)" in r.stderr, r.stderr
    # One GET per small file; the 100 MiB file in 16 MiB parts (7); none for the empty files. Nothing else fetched.
    nonempty_small = sum(1 for k, v in objects.items() if v and not k.startswith("data/large/"))
    expected_gets = nonempty_small + 7
    assert s["progress"]["requests"] == expected_gets
    assert server.settled(lambda: server.gets(bucket)) - gets_before == expected_gets
    check = preload(mounts, os.path.join(mp, "data"), "--check")
    assert check.returncode == 0, check.stderr
    assert f"{len(objects):,} of {len(objects):,} file(s) cached (100.0%)" in check.stdout
    # Every file, read through the mount: the bytes of S3, and not one GET.
    before = server.settled(lambda: server.gets(bucket))
    for k, v in objects.items():
        assert file_sha(os.path.join(mp, k)) == sha(v), k
    assert server.settled(lambda: server.gets(bucket)) == before, "a read after the preload went to S3"
    status = json.loads(mounts.run("status", mp, "--json").stdout)
    assert status["getRequests"] == expected_gets


def test_two_ranks_fetch_each_object_once_between_them(server, bucket, mounts, tmp_path):
    rng = random.Random(17)
    files = {f"shard-{i:04d}.tar": rng.randbytes(rng.randrange(1, 100_000)) for i in range(300)}
    upload_many(server, bucket, "train/", files, tmp_path)
    mp0, _ = mounts.mount(f"s3://{bucket}")
    mp1, _ = mounts.mount(f"s3://{bucket}")
    before = server.settled(lambda: server.gets(bucket))
    sent_before = server.settled(lambda: server.sent_bytes(bucket))
    r0 = preload(mounts, os.path.join(mp0, "train"), "--rank", "0", "--world-size", "2", "--json")
    # Rank and world size from the environment (torchrun's variables).
    r1 = preload(mounts, os.path.join(mp1, "train"), "--json", env=server.env(RANK="1", WORLD_SIZE="2"))
    assert r0.returncode == 0 and r1.returncode == 0, r0.stderr + r1.stderr
    s0, s1 = summary(r0), summary(r1)
    assert (s1["plan"]["share"]["rank"], s1["plan"]["share"]["worldSize"]) == (1, 2)
    assert "RANK/WORLD_SIZE" in r1.stderr
    assert s0["plan"]["files"] == s1["plan"]["files"] == 150
    # Together: one GET per object and exactly the bucket's bytes (no object twice, none missed).
    assert server.settled(lambda: server.gets(bucket)) - before == len(files)
    assert server.settled(lambda: server.sent_bytes(bucket)) - sent_before == sum(len(v) for v in files.values())
    # The documented share: sorted keys, [rank::world_size].
    names = sorted(files)
    for mp, rank in ((mp0, 0), (mp1, 1)):
        c = preload(mounts, os.path.join(mp, "train"), "--all", "--check", "-v", "--json")
        per_file = summary(c)["check"]["perFile"]
        cached = {f["path"].split("/", 1)[1] for f in per_file if f["bytesCached"] == f["bytes"]}
        assert cached == set(names[rank::2])


def test_a_share_larger_than_the_cache_stops_at_the_bound(server, bucket, mounts, tmp_path):
    rng = random.Random(18)
    files = {f"f-{i:02d}.bin": rng.randbytes(1 << 20) for i in range(20)}
    upload_many(server, bucket, "big/", files, tmp_path)
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--cache-size", "8MiB", "--metrics-address", "127.0.0.1:0")
    metrics = Scraper(mounts, mp)
    before = server.settled(lambda: server.gets(bucket))
    r = preload(mounts, os.path.join(mp, "big"), "--json")
    # 90% of 8 MiB holds 7 files of 1 MiB with their block headers.
    assert r.returncode == 3, r.stderr
    assert "more than the cache keeps" in r.stderr and "preloading its first 7 file(s)" in r.stderr, r.stderr
    assert "stopped at the cache bound" in r.stderr and "13 file(s)" in r.stderr, r.stderr
    assert "--cache-size" in r.stderr
    s = summary(r)
    assert s["progress"]["state"] == "stoppedAtBound" and s["progress"]["filesDone"] == 7
    assert server.settled(lambda: server.gets(bucket)) - before == 7, "nothing past the bound was fetched"
    # The metrics count it: ended at the bound, its 7 GETs and their bytes; nothing running.
    m = metrics.scrape()
    assert m.get("ckptfs_preloads_running") == 0 and m.get("ckptfs_preload_files") == 0
    assert m.get("ckptfs_preloads_ended_total", state="stoppedAtBound") == 1
    assert m.get("ckptfs_preloads_ended_total") == 1
    assert m.get("ckptfs_preload_requests_total") == 7
    assert m.get("ckptfs_preload_fetched_bytes_total") == 7 << 20
    status = json.loads(mounts.run("status", mp, "--json").stdout)
    assert status["cacheUsedBytes"] <= status["cacheCapacityBytes"]
    # The files it preloaded stay cached: reading them needs no GET.
    before = server.settled(lambda: server.gets(bucket))
    for name in sorted(files)[:7]:
        assert file_sha(os.path.join(mp, "big", name)) == sha(files[name])
    assert server.settled(lambda: server.gets(bucket)) == before


def test_an_interrupted_preload_resumes_with_only_what_is_missing(server, bucket, mounts, proxy, tmp_path):
    rng = random.Random(19)
    files = {f"s-{i:04d}": rng.randbytes(rng.randrange(1, 50_000)) for i in range(1000)}
    upload_many(server, bucket, "ds/", files, tmp_path)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}")
    p = subprocess.Popen([mounts.bin, "preload", os.path.join(mp, "ds"), "--json"], env=server.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Let some GETs through, then hold the rest in the proxy so the preload is in flight when Ctrl-C comes.
    assert proxy.wait(requests={"GetObject": 300}, timeout=60)
    proxy.hold(["GetObject"])
    assert proxy.wait(held=1, timeout=30)
    # While it runs, `status` shows it.
    st = mounts.run("status", mp)
    assert "preload:" in st.stdout and "files" in st.stdout, st.stdout
    running = json.loads(mounts.run("status", mp, "--json").stdout)["preloads"]
    assert len(running) == 1 and running[0]["progress"]["state"] == "running"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    proxy.release()
    assert p.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err, err
    first = json.loads(out.strip().splitlines()[-1])["progress"]
    assert first["state"] == "cancelled"
    assert 300 <= first["filesDone"] < len(files)
    assert "preloads" not in json.loads(mounts.run("status", mp, "--json").stdout)
    c = summary(preload(mounts, os.path.join(mp, "ds"), "--check", "--json"))["check"]
    assert c["filesCached"] >= first["filesDone"] and c["filesCached"] < len(files)
    # The rerun fetches exactly the files that are not cached, one GET each.
    gets = proxy.stats()["requests"].get("GetObject", 0)
    r = preload(mounts, os.path.join(mp, "ds"), "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)["progress"]
    missing = len(files) - c["filesCached"]
    assert proxy.stats()["requests"].get("GetObject", 0) - gets == missing
    assert s["requests"] == missing
    assert s["bytesAlreadyCached"] == c["bytesCached"]
    assert s["bytesFetched"] == sum(len(v) for v in files.values()) - c["bytesCached"]


def test_check_and_evict_a_path_and_files_from_a_list(server, bucket, mounts, tmp_path):
    rng = random.Random(20)
    # Above the 256 KiB under which a listed file's lookup GETs it whole (S-CONS-LISTED-OPEN): the lookups that
    # resolve the list (and those in listing order ahead of them) must not cache anything by themselves.
    files = {f"{d}/f-{i}.bin": rng.randbytes(300 * 1024 + i) for d in ("a", "b") for i in range(20)}
    upload_many(server, bucket, "", files, tmp_path)
    mp, _ = mounts.mount(f"s3://{bucket}")
    listing = tmp_path / "list.txt"
    listing.write_text("# wanted\n" + "\n".join(os.path.join(mp, f"a/f-{i}.bin") for i in range(10)) + "\n\n"
                       + os.path.join(mp, "b") + "\n")
    r = preload(mounts, "--files-from", str(listing), "--json")
    assert r.returncode == 0, r.stderr
    assert summary(r)["plan"]["files"] == 30
    c = preload(mounts, mp, "--check", "-v")
    assert c.returncode == 1, "not all of the mount is cached"
    assert "30 of 40 file(s) cached (75.0%)" in c.stdout, c.stdout
    lines = {line.split()[-1]: line.split()[0] for line in c.stdout.splitlines()[1:]}
    assert lines["a/f-0.bin"] == "100.0%" and lines["a/f-19.bin"] == "0.0%" and lines["b/f-5.bin"] == "100.0%"
    e = preload(mounts, os.path.join(mp, "b"), "--evict")
    assert e.returncode == 0, e.stderr
    assert "evicted 20 block(s)" in e.stderr and "of 20 file(s)" in e.stderr, e.stderr
    assert "10 of 40 file(s) cached" in preload(mounts, mp, "--check").stdout
    # A read of an evicted file goes to S3 again.
    before = server.settled(lambda: server.gets(bucket))
    assert file_sha(os.path.join(mp, "b/f-3.bin")) == sha(files["b/f-3.bin"])
    assert server.settled(lambda: server.gets(bucket)) - before == 1
    # A path that names nothing is a warning and a failed exit, after the rest was preloaded.
    r = preload(mounts, os.path.join(mp, "b"), os.path.join(mp, "nothing-here"))
    assert r.returncode == 1 and "no such file or directory: " + os.path.join(mp, "nothing-here") in r.stderr, r.stderr
    assert "20 of 20 file(s) cached" in preload(mounts, os.path.join(mp, "b"), "--check").stdout


def test_preload_refuses_what_it_cannot_do(server, bucket, mounts, tmp_path):
    mp, _ = mounts.mount(f"s3://{bucket}")
    r = preload(mounts, str(tmp_path))
    assert r.returncode != 0 and "is not on a ckptfs mount" in r.stderr
    r = preload(mounts, mp, "--rank", "2", "--world-size", "2")
    assert r.returncode != 0 and "--rank must be from 0 to --world-size - 1" in r.stderr
    r = preload(mounts, mp, env=server.env(SLURM_PROCID="5", SLURM_NTASKS="2"))
    assert r.returncode != 0 and "SLURM_PROCID=5" in r.stderr and "--all" in r.stderr
    r = preload(mounts, mp, "--all", "--rank", "0", "--world-size", "2")
    assert r.returncode != 0 and "--all" in r.stderr
    r = preload(mounts, mp, "--check", "--evict")
    assert r.returncode != 0


@pytest.mark.parametrize("mtime", ["last-modified", "stored"])
def test_listing_then_opening_costs_one_get_per_file(server, bucket, mounts, proxy, tmp_path, mtime):
    """The first epoch without a preload: a dataset lists its directory once (ImageFolder, glob) and opens its
    files over the next seconds; each open uses the ETag and size the listing gave (no HEAD of its own)."""
    rng = random.Random(21)
    files = {f"img-{i:04d}.jpg": rng.randbytes(128 * 1024) for i in range(200)}
    upload_many(server, bucket, "train/", files, tmp_path)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--mtime", mtime)
    os.stat(os.path.join(mp, "train"))
    before = proxy.stats()["requests"]
    names = os.listdir(os.path.join(mp, "train"))
    assert sorted(names) == sorted(files)
    time.sleep(1.2)  # past the one-second window in which any open trusts the last check
    for n in names:
        with open(os.path.join(mp, "train", n), "rb") as f:
            assert sha(f.read()) == sha(files[n]), n
    after = proxy.stats()["requests"]
    heads = after.get("HeadObject", 0) - before.get("HeadObject", 0)
    gets = after.get("GetObject", 0) - before.get("GetObject", 0)
    assert gets == len(files), "one GET per file"
    # --mtime stored learns each small listed file's stored mtime with a GET of all of it (its body goes to
    # the cache, so the open and read that follow send nothing) instead of a HEAD; the opens add none.
    assert heads == 0, f"{heads} HEADs"


def test_small_listed_files_cost_one_get_each_and_large_ones_a_head(server, bucket, mounts, tmp_path):
    """--mtime stored (the default): `ls -l` + reading every file makes one GET per small file and no HEAD,
    counted by the server and by `ckptfs status --json`; each file shows the mtime its writer stored and reads
    its bytes. A file above the bound (256 KiB) is HEADed for its mtime, as before, and read with ranged GETs."""
    rng = random.Random(23)
    files = {f"{i:03d}.bin": rng.randbytes(128 * 1024) for i in range(60)}
    files["big.bin"] = rng.randbytes(3 * 1024 * 1024)
    files["edge.bin"] = rng.randbytes(256 * 1024)
    for i, (k, v) in enumerate(sorted(files.items())):
        server.s3.put_object(Bucket=bucket, Key="ds/" + k, Body=v, Metadata={"mtime": str(1_600_000_000 + i)})
    mp, _ = mounts.mount(f"s3://{bucket}", None, None)
    os.stat(os.path.join(mp, "ds"))
    st0 = json.loads(mounts.run("status", mp, "--json").stdout)
    heads0 = server.settled(lambda: server.metric("SeaweedFS_s3_request_total", bucket=bucket, type="GET", code="200"))
    gets0 = server.gets(bucket)
    with os.scandir(os.path.join(mp, "ds")) as it:
        mtimes = {e.name: e.stat().st_mtime for e in it}
    assert mtimes == {k: 1_600_000_000 + i for i, k in enumerate(sorted(files))}
    for n in sorted(files):
        with open(os.path.join(mp, "ds", n), "rb") as f:
            assert sha(f.read()) == sha(files[n]), n
    st1 = json.loads(mounts.run("status", mp, "--json").stdout)
    # SeaweedFS counts a HEAD as type GET with code 200, and a ranged GET as 206.
    heads = server.settled(lambda: server.metric("SeaweedFS_s3_request_total", bucket=bucket, type="GET", code="200")) - heads0
    gets = server.gets(bucket) - gets0
    small = len(files) - 1
    assert st1["headRequests"] - st0["headRequests"] == 1, "only the large file is HEADed"
    assert heads == 1
    assert st1["getRequests"] - st0["getRequests"] == gets
    assert small < gets <= small + 3, "one GET per small file; the 3 MiB file takes 1 to 3 ranged GETs"


def test_small_file_get_0_lists_with_heads_and_downloads_nothing(server, bucket, mounts, tmp_path):
    """--small-file-get 0: `ls -l` of small files HEADs each (for its stored mtime) and downloads none of them;
    a read afterwards GETs the file. A bad size is refused before anything is mounted, naming the option."""
    rng = random.Random(24)
    files = {f"{i:03d}.bin": rng.randbytes(64 * 1024) for i in range(20)}
    for i, (k, v) in enumerate(sorted(files.items())):
        server.s3.put_object(Bucket=bucket, Key="ds/" + k, Body=v, Metadata={"mtime": str(1_600_000_000 + i)})
    bad = mounts.run("mount", f"s3://{bucket}", str(tmp_path / "never"), "--small-file-get", "lots")
    assert bad.returncode != 0 and "--small-file-get" in bad.stderr, bad.stderr
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--small-file-get", "0")
    os.stat(os.path.join(mp, "ds"))
    st0 = json.loads(mounts.run("status", mp, "--json").stdout)
    with os.scandir(os.path.join(mp, "ds")) as it:
        mtimes = {e.name: e.stat().st_mtime for e in it}
    assert mtimes == {k: 1_600_000_000 + i for i, k in enumerate(sorted(files))}
    st1 = json.loads(mounts.run("status", mp, "--json").stdout)
    assert st1["getRequests"] - st0["getRequests"] == 0, "ls -l downloaded files"
    assert st1["headRequests"] - st0["headRequests"] == len(files)
    with open(os.path.join(mp, "ds", "007.bin"), "rb") as f:
        assert sha(f.read()) == sha(files["007.bin"])
    st2 = json.loads(mounts.run("status", mp, "--json").stdout)
    assert st2["getRequests"] - st1["getRequests"] == 1


def test_a_preload_without_a_mount_fills_the_cache_a_mount_then_reads(server, bucket, mounts, tmp_path):
    rng = random.Random(22)
    files = {f"part-{i:03d}.bin": rng.randbytes(rng.randrange(0, 3 * 1024 * 1024)) for i in range(40)}
    upload_many(server, bucket, "ds/train/", {k: v for k, v in files.items() if v}, tmp_path)
    for k, v in files.items():
        if not v:
            server.s3.put_object(Bucket=bucket, Key="ds/train/" + k, Body=b"")
    server.s3.put_object(Bucket=bucket, Key="ds/other.bin", Body=b"not in the prefix")
    cache = str(tmp_path / "shared-cache")
    url = f"s3://{bucket}/ds/train"
    before = server.settled(lambda: server.gets(bucket))
    r = preload(mounts, url, "--cache-dir", cache, "--cache-size", "1GiB", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["url"] == url and s["plan"]["files"] == len(files)
    assert s["progress"]["bytesFetched"] == sum(len(v) for v in files.values())
    assert server.settled(lambda: server.gets(bucket)) - before == s["progress"]["requests"]
    c = preload(mounts, url, "--cache-dir", cache, "--check")
    assert c.returncode == 0 and f"{len(files)} of {len(files)} file(s) cached (100.0%)" in c.stdout, c.stdout + c.stderr
    # A mount of the bucket over that cache reads every file without a GET.
    mp, _ = mounts.mount(f"s3://{bucket}", None, cache, "--cache-size", "1GiB")
    before = server.settled(lambda: server.gets(bucket))
    for k, v in files.items():
        assert file_sha(os.path.join(mp, "ds/train", k)) == sha(v), k
    assert server.settled(lambda: server.gets(bucket)) == before
    # While the mount holds the cache directory, a preload without it refuses and says what to do instead.
    r = preload(mounts, url, "--cache-dir", cache)
    assert r.returncode != 0 and "preload through that mount" in r.stderr, r.stderr
    mounts.unmount(mp)
    # --files-from names paths relative to the prefix; a single object is a path too.
    listing = tmp_path / "some.txt"
    listing.write_text("part-001.bin\npart-002.bin\nmissing.bin\n")
    other = str(tmp_path / "other-cache")
    r = preload(mounts, url, "--files-from", str(listing), "--cache-dir", other, "--json")
    assert r.returncode == 1 and f"no such file or directory: {url}/missing.bin" in r.stderr, r.stderr
    assert summary(r)["plan"]["files"] == 2
    r = preload(mounts, f"{url}/part-003.bin", "--cache-dir", other, "--json")
    assert r.returncode == 0 and summary(r)["plan"]["files"] == 1, r.stderr
    # Options that need a mount, or no mount, are refused before anything is contacted.
    r = preload(mounts, url)
    assert r.returncode != 0 and "--cache-dir" in r.stderr
    r = preload(mounts, str(tmp_path), "--cache-dir", other)
    assert r.returncode != 0 and "without a mount" in r.stderr


def test_a_recorded_access_profile_replays_exactly_its_blocks(server, bucket, mounts, tmp_path):
    rng = random.Random(23)
    MiB = 1 << 20
    files = {f"run/shard-{i}.bin": rng.randbytes(6 * MiB + 100) for i in range(3)}
    for k, v in files.items():
        server.s3.put_object(Bucket=bucket, Key=k, Body=v)
    profile = tmp_path / "profile.jsonl"
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--record", str(profile))
    # A job that reads a few blocks here and there.
    reads = [("run/shard-1.bin", 4 * MiB + 10), ("run/shard-0.bin", 100), ("run/shard-1.bin", 4 * MiB + 4000),
             ("run/shard-2.bin", 6 * MiB + 50), ("run/shard-0.bin", 2 * MiB + 7)]
    for key, off in reads:
        fd = os.open(os.path.join(mp, key), os.O_RDONLY)
        try:
            assert os.pread(fd, 64, off) == files[key][off:off + 64]
        finally:
            os.close(fd)
    mounts.unmount(mp)
    lines = profile.read_text().splitlines()
    assert json.loads(lines[0]) == {"ckptfsAccessProfile": 1, "bucket": bucket, "blockSize": MiB}
    recorded = [(e["key"], e["block"]) for e in map(json.loads, lines[1:])]
    assert len(recorded) == len(set(recorded)), "each block once"
    # The blocks the job read are there, in the order it first read them (the kernel may have read more).
    wanted = []
    for key, off in reads:
        if (key, off // MiB) not in wanted:
            wanted.append((key, off // MiB))
    assert [b for b in recorded if b in wanted] == wanted
    # Replayed into another mount's empty cache: exactly the recorded blocks, and reading them needs no GET.
    mp2, _ = mounts.mount(f"s3://{bucket}")
    before = server.settled(lambda: server.gets(bucket))
    r = preload(mounts, mp2, "--replay", str(profile), "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["progress"]["state"] == "done" and s["progress"]["bytesFetched"] == s["plan"]["bytes"]
    status = json.loads(mounts.run("status", mp2, "--json").stdout)
    assert status["cacheBlocks"] == len(recorded)
    assert server.settled(lambda: server.gets(bucket)) - before == s["progress"]["requests"]
    before = server.settled(lambda: server.gets(bucket))
    for key, block in recorded:
        fd = os.open(os.path.join(mp2, key), os.O_RDONLY)
        try:
            assert os.pread(fd, 100, block * MiB) == files[key][block * MiB:block * MiB + 100]
        finally:
            os.close(fd)
    assert server.settled(lambda: server.gets(bucket)) == before
    # A budget of one block replays the first block recorded and says it stopped there.
    mp3, _ = mounts.mount(f"s3://{bucket}")
    r = preload(mounts, mp3, "--replay", str(profile), "--budget", "1MiB")
    assert r.returncode == 3 and "more than --budget" in r.stderr, r.stderr
    assert json.loads(mounts.run("status", mp3, "--json").stdout)["cacheBlocks"] == 0, "1 MiB holds no block and its header"
    r = preload(mounts, mp3, "--replay", str(profile), "--budget", "1100KiB")
    assert r.returncode == 3, r.stderr
    assert json.loads(mounts.run("status", mp3, "--json").stdout)["cacheBlocks"] == 1


def test_a_background_preload_returns_at_once_and_goes_on_in_the_daemon(server, bucket, mounts, proxy, tmp_path):
    rng = random.Random(23)
    files = {f"s-{i:03d}.bin": rng.randbytes(rng.randrange(1, 50_000)) for i in range(120)}
    upload_many(server, bucket, "bg/", files, tmp_path)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--metrics-address", "127.0.0.1:0")
    metrics = Scraper(mounts, mp)
    # Every GET is held: the command still returns, with the plan, while the preload waits in the daemon.
    proxy.hold(["GetObject"])
    r = preload(mounts, os.path.join(mp, "bg"), "--background", "--json")
    assert r.returncode == 0, r.stderr
    assert "in the background" in r.stderr, r.stderr
    assert summary(r)["plan"]["files"] == len(files)
    status = json.loads(mounts.run("status", mp, "--json").stdout)
    assert len(status.get("preloads", [])) == 1, status
    assert metrics.scrape().get("ckptfs_preloads_running") == 1
    proxy.release()
    assert wait_until(lambda: not json.loads(mounts.run("status", mp, "--json").stdout).get("preloads"), timeout=60)
    assert metrics.scrape().get("ckptfs_preloads_ended_total", state="done") == 1
    check = preload(mounts, os.path.join(mp, "bg"), "--check")
    assert check.returncode == 0 and f"{len(files)} of {len(files)} file(s) cached" in check.stdout, check.stdout
    before = server.settled(lambda: server.gets(bucket))
    for name, data in files.items():
        assert file_sha(os.path.join(mp, "bg", name)) == sha(data)
    assert server.settled(lambda: server.gets(bucket)) == before
    # Refused where it cannot go on: without a mount, and with --check.
    r = preload(mounts, f"s3://{bucket}/bg", "--cache-dir", str(tmp_path / "c2"), "--background")
    assert r.returncode != 0 and "--background needs a mount" in r.stderr, r.stderr
    r = preload(mounts, os.path.join(mp, "bg"), "--background", "--check")
    assert r.returncode != 0 and "--background is for fetching" in r.stderr, r.stderr


def drop_kernel_caches():
    """The kernel forgets its pages, entries and inodes (needs root), so the next epoch asks the mount again."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def test_an_epoch_after_a_preload_sends_no_request_per_file(server, bucket, mounts, proxy, tmp_path):
    """The preload's GETs told the mount each version's stored mtime: an epoch right after it (a dataset lists
    its directory, then opens every file) sends no HEAD and no GET, also with the kernel's caches dropped."""
    rng = random.Random(41)
    files = {f"img-{i:04d}.jpg": rng.randbytes(rng.randrange(1, 64 * 1024)) for i in range(300)}
    upload_many(server, bucket, "train/", files, tmp_path)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None)
    r = preload(mounts, os.path.join(mp, "train"), "--json")
    assert r.returncode == 0 and summary(r)["progress"]["filesDone"] == len(files), r.stderr
    drop_kernel_caches()
    os.stat(os.path.join(mp, "train"))  # the kernel forgot the directory too: looked up again (HEAD, LIST)
    before = proxy.stats()["requests"]
    names = os.listdir(os.path.join(mp, "train"))
    assert sorted(names) == sorted(files)
    time.sleep(1.2)  # past the one-second window in which any open trusts the last check
    for n in names:
        assert os.stat(os.path.join(mp, "train", n)).st_size == len(files[n])
        with open(os.path.join(mp, "train", n), "rb") as f:
            assert sha(f.read()) == sha(files[n]), n
    after = proxy.stats()["requests"]
    sent = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    assert sent.get("HeadObject", 0) == 0 and sent.get("GetObject", 0) == 0, sent
    assert sent.get("ListObjectsV2", 0) == 1, sent  # the dataset's listdir


def bdi_read_ahead_kb(mp):
    """The kernel's read-ahead window (KiB) of the filesystem mounted at `mp`."""
    st = os.stat(mp)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as f:
        return int(f.read())


def test_a_cached_epoch_reads_a_block_per_request_and_a_replaced_object_is_never_served_stale(server, bucket, mounts,
                                                                                             tmp_path):
    """The mount's read-ahead window is the largest read whose reply fits in a pipe (512 KiB with the default
    pipe-max-size; the kernel's default of 128 KiB made each 1 MiB block cost 8 reads, each opening and checking
    its block file): an epoch over a preloaded file, kernel caches dropped, costs one read per window and no
    GET. The object replaced in S3 (a new ETag) is then read as its new bytes, never the cached old ones, and
    the next cached epoch of it sends no GET either."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        window = 1024 if int(f.read()) >= (1 << 20) + 4 * 4096 else 512
    rng = random.Random(162)
    old = rng.randbytes(8 * 1024 * 1024 + 5)
    server.s3.put_object(Bucket=bucket, Key="big/a.bin", Body=old)
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--metadata-ttl", "1")
    assert bdi_read_ahead_kb(mp) == window
    path = os.path.join(mp, "big", "a.bin")

    def status():
        return json.loads(mounts.run("status", mp, "--json").stdout)

    def epoch(expected):
        drop_kernel_caches()
        gets, hits = server.settled(lambda: server.gets(bucket)), status()["cacheHits"]
        assert file_sha(path) == sha(expected)
        assert server.settled(lambda: server.gets(bucket)) == gets, "a cached epoch went to S3"
        return status()["cacheHits"] - hits

    r = preload(mounts, os.path.join(mp, "big"), "--json")
    assert r.returncode == 0, r.stderr
    # 8 MiB in reads of the window, and the last 5 bytes (72 reads with 128 KiB reads).
    assert epoch(old) == 8 * 1024 // window + 1
    new = rng.randbytes(3 * 1024 * 1024 + 7)
    server.s3.put_object(Bucket=bucket, Key="big/a.bin", Body=new)
    time.sleep(1.5)  # past the TTL (and the second in which an open trusts the last check)
    gets = server.settled(lambda: server.gets(bucket))
    assert file_sha(path) == sha(new)
    assert server.settled(lambda: server.gets(bucket)) > gets, "the new version came from S3"
    time.sleep(1.5)
    epoch(new)  # its blocks may be served from memory (just downloaded), so no count of cache reads


def test_a_trainer_read_during_a_preload_does_not_wait_behind_it(server, bucket, mounts, proxy, tmp_path):
    """Reads by the trainer come first: with a preload at its widest (--parallel 64) and all of its GETs in
    flight (held by the proxy), a read of a file the preload has not fetched sends its GET at once, not after
    the preload's (it does not wait for a connection they hold)."""
    rng = random.Random(42)
    files = {f"f-{i:04d}.bin": rng.randbytes(4096) for i in range(300)}
    upload_many(server, bucket, "ds/", files, tmp_path)
    trainer = rng.randbytes(100_000)
    server.s3.put_object(Bucket=bucket, Key="other/t.bin", Body=trainer)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None)
    path = os.path.join(mp, "other", "t.bin")
    assert os.stat(path).st_size == len(trainer)
    proxy.hold(["GetObject"])
    p = subprocess.Popen([mounts.bin, "preload", os.path.join(mp, "ds"), "--parallel", "64", "--json"],
                         env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read = {}
    reader = threading.Thread(target=lambda: read.update(data=open(path, "rb").read()))
    try:
        assert proxy.wait(held=64, timeout=60), f"the preload has 64 GETs in flight: {proxy.stats()}"
        reader.start()
        # The trainer's GET reaches S3 while the preload's 64 are still in flight.
        assert proxy.wait(held=65, timeout=20), f"the trainer's GET waited behind the preload's: {proxy.stats()}"
        assert p.poll() is None
    finally:
        proxy.release()
    reader.join(60)
    assert read.get("data") == trainer
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and summary(subprocess.CompletedProcess([], 0, out, err))["progress"]["filesDone"] == len(files), err


def test_an_immutable_mount_trusts_what_it_knows_without_revalidating(server, bucket, mounts, proxy, tmp_path):
    """--immutable: once a file's version is known, no HEAD or LIST revalidates it and its cached blocks are read
    with no request, long after the TTL; new names still appear after the TTL; a change made elsewhere is not
    seen. The same epoch on a mount without it revalidates every file."""
    rng = random.Random(43)
    files = {f"s-{i:03d}.bin": rng.randbytes(rng.randrange(1, 200_000)) for i in range(100)}
    upload_many(server, bucket, "set/", files, tmp_path)

    def epoch(mp, listdir):
        d = os.path.join(mp, "set")
        if listdir:
            assert set(files) <= set(os.listdir(d))
        for n, v in files.items():
            assert os.stat(os.path.join(d, n)).st_size == len(v)
            with open(os.path.join(d, n), "rb") as f:
                assert sha(f.read()) == sha(v), n

    def sent(before):
        after = proxy.stats()["requests"]
        return {op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) != before.get(op, 0)}

    fixed, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--immutable", "--metadata-ttl", "1")
    plain, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--metadata-ttl", "1")
    for mp in (fixed, plain):
        epoch(mp, listdir=True)
    time.sleep(1.5)  # past the TTL and the one-second window of opens
    drop_kernel_caches()
    before = proxy.stats()["requests"]
    epoch(fixed, listdir=False)
    assert sent(before) == {}, "the immutable mount sent requests for files it knew"
    before = proxy.stats()["requests"]
    epoch(plain, listdir=False)
    assert sum(sent(before).values()) > 0, "the mount without --immutable revalidates after the TTL"
    # An object replaced elsewhere: the immutable mount keeps reading the version it knows (from its cache).
    old = files["s-000.bin"]
    server.s3.put_object(Bucket=bucket, Key="set/s-000.bin", Body=b"changed elsewhere")
    time.sleep(1.5)
    with open(os.path.join(fixed, "set", "s-000.bin"), "rb") as f:
        assert f.read() == old
    # A new name appears after the TTL, in a lookup and in the listing (which asks S3 again after the TTL).
    server.s3.put_object(Bucket=bucket, Key="set/new.bin", Body=b"new")
    time.sleep(1.5)
    before = proxy.stats()["requests"]
    assert "new.bin" in os.listdir(os.path.join(fixed, "set"))
    s = sent(before)
    # The listing, and (if the kernel asked for attributes with it) one request each for the mtimes of the
    # versions it shows that no GET or HEAD answered for: the new file, and the replaced one (small: a GET of
    # all of it instead of a HEAD, S-CONS-LISTED-OPEN).
    assert s.get("ListObjectsV2") == 1 and s.get("HeadObject", 0) + s.get("GetObject", 0) <= 2, s
    with open(os.path.join(fixed, "set", "new.bin"), "rb") as f:
        assert f.read() == b"new"
