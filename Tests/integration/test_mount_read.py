"""Reading through a real mount of a real S3 server, checked from outside (boto3, sha256, server metrics)."""
import hashlib
import json
import mmap
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import is_mounted, wait_until

ODD_KEYS = ["plain.txt", "with space.bin", "plus+sign", "percent%41", "tilde~", "ünïcødé/ファイル.pt",
            "deep/a/b/c/d/e/model.safetensors", "sym!$&'()*,;=@"]


def put(server, bucket, key, data):
    server.s3.put_object(Bucket=bucket, Key=key, Body=data)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def test_tree_and_bytes_match_the_bucket(server, bucket, mounts):
    rng = random.Random(1)
    objects = {k: rng.randbytes(rng.randrange(0, 300_000)) for k in ODD_KEYS}
    objects["big/checkpoint.bin"] = rng.randbytes(9 * 1024 * 1024 + 17)
    objects["empty-dir-marker/"] = b""
    for k, v in objects.items():
        put(server, bucket, k, v)
    mp, _ = mounts.mount(f"s3://{bucket}")
    seen = set()
    for root, dirs, files in os.walk(mp):
        for f in files:
            seen.add(os.path.relpath(os.path.join(root, f), mp))
        for d in dirs:
            seen.add(os.path.relpath(os.path.join(root, d), mp) + "/")
    expected_files = {k for k in objects if not k.endswith("/")}
    assert expected_files <= seen
    assert "empty-dir-marker/" in seen
    assert {s for s in seen if not s.endswith("/")} == expected_files
    for k in expected_files:
        assert file_sha(os.path.join(mp, k)) == sha(objects[k]), k
        assert os.stat(os.path.join(mp, k)).st_size == len(objects[k])
    st = os.stat(os.path.join(mp, "plain.txt"))
    assert st.st_uid == os.getuid() and oct(st.st_mode & 0o777) == "0o644"
    assert oct(os.stat(os.path.join(mp, "deep")).st_mode & 0o777) == "0o755"


def test_directory_of_ten_thousand_objects(server, bucket, mounts, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(10_000):
        (src / f"sample-{i:05d}.bin").write_bytes(b"x")
    r = subprocess.run(["s5cmd", "--endpoint-url", server.endpoint, "cp", str(src) + "/*", f"s3://{bucket}/many/"],
                       env=server.env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mp, _ = mounts.mount(f"s3://{bucket}")
    requests_before = server.metric("SeaweedFS_s3_request_total", bucket=bucket)
    t0 = time.time()
    names = os.listdir(os.path.join(mp, "many"))
    elapsed = time.time() - t0
    assert len(names) == 10_000
    assert set(names) == {f"sample-{i:05d}.bin" for i in range(10_000)}
    assert elapsed < 60, f"listing took {elapsed:.1f}s"
    # stat of every entry (what ls -l does) is answered from the listing: no request of its own. The listing
    # asks for each file's stored mtime once (a GET of all of a small file), and answers without waiting for
    # those requests, which go on meanwhile: so the count covers the listing and the stats together.
    for n in names[:2000]:
        assert os.stat(os.path.join(mp, "many", n)).st_size == 1
    sent = server.metric("SeaweedFS_s3_request_total", bucket=bucket) - requests_before
    assert sent < 10_000 + 50, sent


def test_random_preads_and_mmap(server, bucket, mounts):
    data = random.Random(2).randbytes(6 * 1024 * 1024 + 999)
    put(server, bucket, "weights.safetensors", data)
    mp, _ = mounts.mount(f"s3://{bucket}")
    path = os.path.join(mp, "weights.safetensors")
    fd = os.open(path, os.O_RDONLY)
    try:
        rng = random.Random(3)
        for _ in range(200):
            off = rng.randrange(0, len(data))
            n = rng.choice([1, 7, 4096, 65536, 1 << 20])
            assert os.pread(fd, n, off) == data[off:off + n]
        assert os.pread(fd, 10, len(data)) == b""
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            assert len(m) == len(data)
            for _ in range(50):
                off = rng.randrange(0, len(data) - 100)
                assert m[off:off + 100] == data[off:off + 100]
            assert m[-5:] == data[-5:]
    finally:
        os.close(fd)


def resident_bytes(path):
    """Bytes of `path` in the kernel's page cache (fincore opens it anew: a warm file, so no direct I/O)."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[0])


def test_a_cold_large_file_bypasses_the_page_cache_and_still_maps(server, bucket, mounts):
    data = random.Random(12).randbytes(40 * 1024 * 1024 + 77)
    put(server, bucket, "model-00001.safetensors", data)
    put(server, bucket, "small.bin", data[:1 << 20])
    mp, _ = mounts.mount(f"s3://{bucket}")
    path = os.path.join(mp, "model-00001.safetensors")
    # Cold and 40 MiB: read with direct I/O, so the FUSE file's pages never enter the page cache.
    assert file_sha(path) == sha(data)
    status = lambda: json.loads(mounts.run("status", mp, "--json").stdout)
    assert status()["directOpens"] == 1
    # Once its blocks are cached the file is warm, so fincore's own open is not a direct one (whose mapping
    # would drop the pages it is about to count).
    assert wait_until(lambda: status()["cacheBlocks"] >= 41, 30)
    assert resident_bytes(path) == 0
    # A small file keeps the page cache.
    assert file_sha(os.path.join(mp, "small.bin")) == sha(data[:1 << 20])
    assert resident_bytes(os.path.join(mp, "small.bin")) > 0
    mounts.unmount(mp)
    # Shared mappings of a direct-I/O handle work (FUSE_DIRECT_IO_ALLOW_MMAP), as safetensors and numpy use them.
    mp, _ = mounts.mount(f"s3://{bucket}")
    path = os.path.join(mp, "model-00001.safetensors")
    with open(path, "rb") as f:
        assert f.read(8) == data[:8]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            rng = random.Random(13)
            for _ in range(50):
                off = rng.randrange(0, len(data) - 4096)
                assert m[off:off + 4096] == data[off:off + 4096]
            assert hashlib.sha256(m).hexdigest() == sha(data)
    assert json.loads(mounts.run("status", mp, "--json").stdout)["directOpens"] == 1


def test_remount_serves_cached_blocks_without_downloading_again(server, bucket, mounts):
    data = random.Random(4).randbytes(12 * 1024 * 1024 + 5)
    put(server, bucket, "shard-000.tar", data)
    mp, cache = mounts.mount(f"s3://{bucket}")
    assert file_sha(os.path.join(mp, "shard-000.tar")) == sha(data)
    mounts.unmount(mp)
    before_bytes = server.settled(lambda: server.sent_bytes(bucket))
    before_gets = server.settled(lambda: server.gets(bucket))
    mp2, _ = mounts.mount(f"s3://{bucket}", None, cache)
    assert file_sha(os.path.join(mp2, "shard-000.tar")) == sha(data)
    assert json.loads(mounts.run("status", mp2, "--json").stdout)["getRequests"] == 0
    assert server.settled(lambda: server.gets(bucket)) - before_gets == 0
    assert server.settled(lambda: server.sent_bytes(bucket)) - before_bytes == 0


def test_a_corrupted_cache_block_is_fetched_again_never_served(server, bucket, mounts):
    data = random.Random(5).randbytes(5 * 1024 * 1024)
    put(server, bucket, "model.pt", data)
    mp, cache = mounts.mount(f"s3://{bucket}")
    assert file_sha(os.path.join(mp, "model.pt")) == sha(data)
    mounts.unmount(mp)
    blocks = sorted(os.path.join(root, f) for root, _, fs in os.walk(os.path.join(cache, "blocks")) for f in fs)
    assert len(blocks) == 5
    victim = blocks[2]
    with open(victim, "r+b") as f:
        f.seek(4096 + 1000)
        b = f.read(1)
        f.seek(4096 + 1000)
        f.write(bytes([b[0] ^ 0xFF]))
    before = server.settled(lambda: server.sent_bytes(bucket))
    mp2, _ = mounts.mount(f"s3://{bucket}", None, cache)
    assert file_sha(os.path.join(mp2, "model.pt")) == sha(data)
    assert server.settled(lambda: server.sent_bytes(bucket)) - before == 1024 * 1024, "exactly the damaged block is downloaded again"


def test_a_changed_object_is_seen_after_the_ttl(server, bucket, mounts):
    put(server, bucket, "latest.ckpt", b"version one")
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--metadata-ttl", "1")
    p = os.path.join(mp, "latest.ckpt")
    with open(p, "rb") as f:
        assert f.read() == b"version one"
    put(server, bucket, "latest.ckpt", b"version two, longer")
    time.sleep(2.5)
    assert os.stat(p).st_size == len(b"version two, longer")
    with open(p, "rb") as f:
        assert f.read() == b"version two, longer"


def test_prefix_mount_and_read_only_mount(server, bucket, mounts):
    put(server, bucket, "runs/7/a.bin", b"a")
    put(server, bucket, "other/b.bin", b"b")
    mp, _ = mounts.mount(f"s3://{bucket}/runs/7")
    assert os.listdir(mp) == ["a.bin"]
    # A file written under a prefix mount lands under the prefix.
    with open(os.path.join(mp, "new.bin"), "wb") as f:
        f.write(b"new")
    assert mounts.run("flush", mp).returncode == 0
    assert server.s3.get_object(Bucket=bucket, Key="runs/7/new.bin")["Body"].read() == b"new"
    ro, _ = mounts.mount(f"s3://{bucket}/runs/7", None, None, "--read-only")
    assert sorted(os.listdir(ro)) == ["a.bin", "new.bin"]
    for attempt in (lambda: open(os.path.join(ro, "x.bin"), "wb"), lambda: os.mkdir(os.path.join(ro, "d")),
                    lambda: os.unlink(os.path.join(ro, "a.bin")), lambda: open(os.path.join(ro, "a.bin"), "r+b")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == 30  # EROFS


def test_mount_errors_name_the_cause_and_exit_non_zero(server, bucket, mounts, tmp_path):
    mp = mounts.dirs()
    r = mounts.run("mount", "s3://no-such-bucket-xyz", mp)
    assert r.returncode != 0 and "NoSuchBucket" in r.stderr and "check the bucket name" in r.stderr
    r = mounts.run("mount", f"s3://{bucket}", mp, env=server.env(AWS_SECRET_ACCESS_KEY="wrong-secret"))
    assert r.returncode != 0 and "SignatureDoesNotMatch" in r.stderr and "wrong-secret" not in r.stderr
    r = mounts.run("mount", f"s3://{bucket}", mp, env=server.env(AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_MAX_ATTEMPTS="2"))
    assert r.returncode != 0 and "nothing answers at the endpoint" in r.stderr
    r = mounts.run("mount", f"s3://{bucket}", str(tmp_path / "missing"))
    assert r.returncode != 0 and "does not exist" in r.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = mounts.run("mount", f"s3://{bucket}", str(full))
    assert r.returncode != 0 and "not empty" in r.stderr
    live, cache = mounts.mount(f"s3://{bucket}")
    r = mounts.run("mount", f"s3://{bucket}", live)
    assert r.returncode != 0 and "already a mount point" in r.stderr
    r = mounts.run("mount", f"s3://{bucket}", mounts.dirs(), "--cache-dir", cache)
    assert r.returncode != 0 and "in use by another ckptfs mount" in r.stderr
    r = mounts.run("mount", f"s3://{bucket}", mounts.dirs(), "--cache-size", "lots")
    assert r.returncode != 0 and "--cache-size" in r.stderr
    assert not any(is_mounted(os.path.join(str(tmp_path), d)) for d in os.listdir(tmp_path) if d != os.path.basename(live))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_signals_and_fusermount_unmount_cleanly(server, bucket, mounts, how):
    put(server, bucket, "f", b"1")
    mp = mounts.dirs()
    cache = os.path.join(mounts.tmp, "cache-sig")
    p = subprocess.Popen([mounts.bin, "mount", f"s3://{bucket}", mp, "--cache-dir", cache, "--foreground"],
                         env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: is_mounted(mp)), "mount did not come up"
        assert os.listdir(mp) == ["f"]
        if how == "fusermount3":
            subprocess.run(["fusermount3", "-u", mp], check=True)
        else:
            p.send_signal(getattr(signal, how))
        assert p.wait(timeout=20) == 0
        assert not is_mounted(mp)
        # The cache is free again for the next mount.
        mp2, _ = mounts.mount(f"s3://{bucket}", None, cache)
        assert os.listdir(mp2) == ["f"]
    finally:
        if p.poll() is None:
            p.kill()
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
