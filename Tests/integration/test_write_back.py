"""Writing through a real mount of a real S3 server: every kind of write a checkpoint writer does, the
durability contract (close, fsync, flush, unmount, SIGTERM), crash recovery with the daemon killed at several
points, and a full cache disk. Checked from outside with boto3 by sha256."""
import errno
import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import UPLOADS, is_mounted, wait_until

MiB = 1 << 20


def sha(data):
    return hashlib.sha256(data).hexdigest()


def s3_bytes(server, bucket, key):
    return server.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(server, bucket, prefix=""):
    keys = []
    for page in server.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def open_multipart(server, bucket):
    return server.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def daemon_pid(mp):
    out = subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def flush(mounts, path, timeout=120):
    r = mounts.run("flush", path, "--timeout", str(timeout), timeout=timeout + 30)
    assert r.returncode == 0, r.stderr
    return r


def status(mounts, mp):
    """`ckptfs status --json`, asked over the mount's control socket directly: a child process would inherit
    (and at exec close) descriptors of files open in the mount, and each such close() is one the mount sees."""
    import socket
    path = "/run/ckptfs/" + hashlib.sha256(os.path.realpath(mp).encode()).hexdigest()[:20] + ".sock"
    if not os.path.exists(path):
        r = mounts.run("status", mp, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b'{"cmd":"status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def kill9(mp):
    pid = daemon_pid(mp)
    assert pid, "daemon not found"
    os.kill(pid, signal.SIGKILL)
    kill9_cleanup(mp)


def kill9_cleanup(mp):
    """After the daemon was killed: wait until it is gone and detach its mount."""
    assert wait_until(lambda: daemon_pid(mp) is None, 10)
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    assert wait_until(lambda: not is_mounted(mp), 10)


def test_every_kind_of_write_lands_byte_exact(server, bucket, mounts):
    rng = random.Random(7)
    server.s3.put_object(Bucket=bucket, Key="existing.bin", Body=rng.randbytes(3 * MiB + 5))
    mp, _ = mounts.mount(f"s3://{bucket}")
    expect = {}

    small = rng.randbytes(1000)
    with open(f"{mp}/small.bin", "wb") as f:
        f.write(small)
    expect["small.bin"] = small

    big = rng.randbytes(40 * MiB + 123)  # several multipart parts
    with open(f"{mp}/big.bin", "wb") as f:
        for i in range(0, len(big), MiB):
            f.write(big[i:i + MiB])
    expect["big.bin"] = big

    # Random writes, including past EOF (sparse): compare with the same writes to a bytearray.
    model = bytearray()
    with open(f"{mp}/random.bin", "wb") as f:
        for _ in range(200):
            off = rng.randrange(0, 6 * MiB)
            data = rng.randbytes(rng.randrange(1, 70_000))
            f.seek(off)
            f.write(data)
            if len(model) < off + len(data):
                model.extend(b"\0" * (off + len(data) - len(model)))
            model[off:off + len(data)] = data
    expect["random.bin"] = bytes(model)

    with open(f"{mp}/sparse.bin", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"end")
    expect["sparse.bin"] = b"\0" * (5 * MiB) + b"end"

    # Append in several opens (TensorBoard event files).
    log = b""
    for i in range(5):
        line = f"event {i}\n".encode() * 100
        with open(f"{mp}/events.log", "ab") as f:
            f.write(line)
        log += line
    expect["events.log"] = log

    # Truncate: shrink, then grow.
    data = rng.randbytes(2 * MiB)
    with open(f"{mp}/trunc.bin", "wb") as f:
        f.write(data)
    os.truncate(f"{mp}/trunc.bin", 1000)
    with open(f"{mp}/trunc.bin", "r+b") as f:
        f.truncate(3000)
    expect["trunc.bin"] = data[:1000] + b"\0" * 2000

    # Overwrite in place an object that is only in S3.
    orig = bytearray(s3_bytes(server, bucket, "existing.bin"))
    with open(f"{mp}/existing.bin", "r+b") as f:
        f.seek(MiB + 3)
        f.write(b"PATCHED")
    orig[MiB + 3:MiB + 10] = b"PATCHED"
    expect["existing.bin"] = bytes(orig)

    # Overwrite with O_TRUNC.
    with open(f"{mp}/small.bin", "wb") as f:
        f.write(b"second version")
    expect["small.bin"] = b"second version"

    # mkdir, files inside, rmdir refused while not empty, unlink.
    os.makedirs(f"{mp}/run1/ckpt")
    with open(f"{mp}/run1/ckpt/a.npy", "wb") as f:
        f.write(b"x" * 10)
    with pytest.raises(OSError) as e:
        os.rmdir(f"{mp}/run1/ckpt")
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(f"{mp}/run1/ckpt/a.npy")
    os.rmdir(f"{mp}/run1/ckpt")
    assert not os.path.exists(f"{mp}/run1/ckpt")
    os.mkdir(f"{mp}/empty-dir")

    # Reads on this mount see the newest local bytes, before and after the upload.
    for k, v in expect.items():
        with open(f"{mp}/{k}", "rb") as f:
            assert sha(f.read()) == sha(v), k
        assert os.stat(f"{mp}/{k}").st_size == len(v), k

    flush(mounts, mp)
    for k, v in expect.items():
        assert sha(s3_bytes(server, bucket, k)) == sha(v), k
    keys = set(s3_keys(server, bucket))
    assert "run1/ckpt/a.npy" not in keys and "run1/ckpt/" not in keys
    assert "empty-dir/" in keys
    assert open_multipart(server, bucket) == []
    st = status(mounts, mp)["writeBack"]
    assert st["dirtyFiles"] == 0 and st["failures"] == []
    assert sorted(os.listdir(mp)) == sorted(list(expect) + ["empty-dir", "run1"])


def test_ml_checkpoint_formats(server, bucket, mounts, tmp_path):
    np = pytest.importorskip("numpy")
    h5py = pytest.importorskip("h5py")
    from safetensors.numpy import load_file, save_file
    mp, _ = mounts.mount(f"s3://{bucket}")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)

    # HDF5: create, then reopen and rewrite in place (h5py seeks back and rewrites its superblock).
    with h5py.File(f"{mp}/model.h5", "w") as f:
        f.create_dataset("w", data=w, chunks=(64, 64))
        f.attrs["epoch"] = 1
    with h5py.File(f"{mp}/model.h5", "a") as f:
        f["w"][10:20, :] = -1.0
        f.create_dataset("b", data=b)
        f.attrs["epoch"] = 2
    w[10:20, :] = -1.0
    np.save(f"{mp}/w.npy", w)
    save_file({"w": w, "b": b}, f"{mp}/model.safetensors")

    flush(mounts, mp)
    local = tmp_path / "dl"
    local.mkdir()
    for k in ["model.h5", "w.npy", "model.safetensors"]:
        (local / k).write_bytes(s3_bytes(server, bucket, k))
    with h5py.File(local / "model.h5", "r") as f:
        assert f.attrs["epoch"] == 2
        assert np.array_equal(f["w"][...], w) and np.array_equal(f["b"][...], b)
    assert np.array_equal(np.load(local / "w.npy"), w)
    t = load_file(str(local / "model.safetensors"))
    assert np.array_equal(t["w"], w) and np.array_equal(t["b"], b)


def _writer(args):
    mp, proc, n = args
    out = {}
    rng = random.Random(proc)
    for i in range(n):
        data = rng.randbytes(rng.randrange(1, 64 * 1024))
        name = f"p{proc}/f{i:03d}.bin"
        os.makedirs(os.path.dirname(f"{mp}/{name}"), exist_ok=True)
        with open(f"{mp}/{name}", "wb") as f:
            f.write(data)
        out[name] = sha(data)
    return out


def test_eight_processes_fifty_files_each(server, bucket, mounts):
    mp, _ = mounts.mount(f"s3://{bucket}")
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.map(_writer, [(mp, p, 50) for p in range(8)])
    expect = {k: v for r in results for k, v in r.items()}
    assert len(expect) == 400
    flush(mounts, mp)
    keys = set(s3_keys(server, bucket))
    assert set(expect) <= keys
    for k, v in expect.items():
        assert sha(s3_bytes(server, bucket, k)) == v, k


def test_fsync_waits_for_s3_and_close_does_not(server, bucket, mounts, proxy):
    proxy.hold(UPLOADS)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--upload-delay", "0")
    with open(f"{mp}/held.bin", "wb") as f:
        f.write(b"held")
    # close() returned, but the upload is held in the proxy: the object is not in S3, and status says it is dirty.
    assert proxy.wait(held=1), "the upload of held.bin never started"
    assert "held.bin" not in s3_keys(server, bucket)
    st = status(mounts, mp)["writeBack"]
    assert st["dirtyFiles"] == 1 and st["pending"][0]["path"] == "held.bin"
    r = mounts.run("flush", mp, "--timeout", "1")
    assert r.returncode != 0 and "held.bin" in r.stderr
    mp2, _ = mounts.mount(f"s3://{bucket}")
    fd = os.open(f"{mp2}/synced.bin", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"x" * 100_000)
    os.fsync(fd)
    assert sha(s3_bytes(server, bucket, "synced.bin")) == sha(b"x" * 100_000), "fsync returned before S3 had it"
    os.close(fd)


def test_unmount_and_sigterm_drain_the_queue(server, bucket, mounts, proxy):
    data = os.urandom(24 * MiB)
    mp, cache = mounts.mount(f"s3://{bucket}")
    with open(f"{mp}/a.bin", "wb") as f:
        f.write(data)
    mounts.unmount(mp)  # returns after the upload
    assert sha(s3_bytes(server, bucket, "a.bin")) == sha(data)

    mp, cache = mounts.mount(f"s3://{bucket}", mp, cache)
    with open(f"{mp}/b.bin", "wb") as f:
        f.write(data)
    pid = daemon_pid(mp)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: daemon_pid(mp) is None, 60)
    mounts.active.remove(mp)
    assert sha(s3_bytes(server, bucket, "b.bin")) == sha(data)

    # What cannot be drained in time stays in the journal, and unmount says so.
    proxy.hold(UPLOADS)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", mp, cache, "--upload-delay", "0")
    with open(f"{mp}/c.bin", "wb") as f:
        f.write(b"c" * 1000)
    assert proxy.wait(held=1), "the upload of c.bin never started"
    r = mounts.run("unmount", mp, "--drain-timeout", "1")
    assert r.returncode == 0 and "c.bin" in r.stderr and "journal" in r.stderr
    mounts.active.remove(mp)
    assert "c.bin" not in s3_keys(server, bucket)
    mp, cache = mounts.mount(f"s3://{bucket}", mp, cache)
    flush(mounts, mp)
    assert s3_bytes(server, bucket, "c.bin") == b"c" * 1000


def write_files(mp, n, size, seed):
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        data = rng.randbytes(size)
        with open(f"{mp}/ckpt-{i}.bin", "wb") as f:
            f.write(data)
        out[f"ckpt-{i}.bin"] = data
    return out


def test_kill9_with_uploads_pending_recovers_everything(server, bucket, mounts, proxy):
    proxy.hold(UPLOADS)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--upload-delay", "0")
    files = write_files(mp, 6, 3 * MiB, 1)
    big = os.urandom(35 * MiB)
    with open(f"{mp}/big.bin", "wb") as f:
        f.write(big)
    files["big.bin"] = big
    # The uploads are pending (held in the proxy), so the test cannot pass without recovery.
    assert proxy.wait(held=1), proxy.stats()
    st = status(mounts, mp)["writeBack"]
    assert st["dirtyFiles"] == len(files) and st["uploadedFiles"] == 0
    assert s3_keys(server, bucket) == []
    kill9(mp)
    mounts.active.remove(mp)
    # A torn record at the end of the journal (a crash mid-append) is ignored.
    with open(f"{cache}/journal", "ab") as j:
        j.write(b"\x40\x00\x00\x00garbage")
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", mp, cache)
    # Until uploaded, reads return the staged bytes.
    for k, v in files.items():
        with open(f"{mp}/{k}", "rb") as f:
            assert sha(f.read()) == sha(v), k
    assert status(mounts, mp)["writeBack"]["recovered"] == len(files)
    mounts.run("unmount", mp, "--drain-timeout", "0")
    mounts.active.remove(mp)
    answered = proxy.stats()["responses"]
    assert s3_keys(server, bucket) == [] and not any(op in answered for op in UPLOADS), answered
    mp, _ = mounts.mount(f"s3://{bucket}", mp, cache)
    flush(mounts, mp)
    for k, v in files.items():
        assert sha(s3_bytes(server, bucket, k)) == sha(v), k
    assert open_multipart(server, bucket) == []


@pytest.mark.parametrize("point", ["during-parts", "before-complete", "after-complete"])
def test_crash_during_upload_recovers(server, bucket, mounts, proxy, point):
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}")
    pid = daemon_pid(mp)
    # 50 MiB goes up as four 16 MiB parts. The proxy kills the daemon (SIGKILL) at the point:
    if point == "during-parts":  # when the second part is sent (the first may still be on its way)
        proxy.kill_on_request(pid, ["UploadPart"], nth=2)
    elif point == "before-complete":  # when CompleteMultipartUpload is sent, which never reaches S3
        proxy.kill_on_request(pid, ["CompleteMultipartUpload"])
    else:  # once S3 has completed the upload, before the daemon hears of it
        proxy.kill_after_response(pid, ["CompleteMultipartUpload"])
    data = os.urandom(50 * MiB)
    with open(f"{mp}/model.bin", "wb") as f:
        f.write(data)
    assert proxy.wait(kills=1, timeout=60), f"the crash point was not reached: {proxy.stats()}"
    assert wait_until(lambda: daemon_pid(mp) is None, 10)
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    mounts.active.remove(mp)
    seen = proxy.stats()
    assert seen["requests"].get("CreateMultipartUpload") == 1, seen
    if point == "during-parts":
        assert seen["requests"]["UploadPart"] >= 2 and "CompleteMultipartUpload" not in seen["requests"], seen
    elif point == "before-complete":
        assert seen["responses"]["UploadPart"] == [200] * 4, seen
    if point != "after-complete":
        assert "model.bin" not in s3_keys(server, bucket)
        assert open_multipart(server, bucket) != [], "a multipart upload was in progress"
    else:
        assert sha(s3_bytes(server, bucket, "model.bin")) == sha(data), "the upload had landed before the crash"
    mp, _ = mounts.mount(f"s3://{bucket}", mp, cache)
    flush(mounts, mp)
    assert sha(s3_bytes(server, bucket, "model.bin")) == sha(data)
    assert open_multipart(server, bucket) == [], "recovery left a multipart upload behind"


def test_damaged_staged_file_is_quarantined_not_uploaded(server, bucket, mounts, proxy):
    proxy.hold(UPLOADS)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--upload-delay", "0")
    write_files(mp, 2, 100_000, 3)
    assert proxy.wait(held=2), proxy.stats()
    kill9(mp)
    mounts.active.remove(mp)
    staged = sorted(os.listdir(f"{cache}/staging"), key=int)
    assert len(staged) == 2
    with open(f"{cache}/staging/{staged[0]}", "r+b") as f:
        f.seek(500)
        f.write(b"\xff" * 10)
    mp, _ = mounts.mount(f"s3://{bucket}", mp, cache)
    flush(mounts, mp)
    st = status(mounts, mp)["writeBack"]
    assert len(st["quarantined"]) == 1
    assert len(s3_keys(server, bucket)) == 1, "the damaged file was uploaded"
    assert len(os.listdir(f"{cache}/lost+found")) == 1


def test_full_cache_disk_gives_enospc_and_keeps_running(server, bucket, mounts, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(tiny)], check=True)
    try:
        mp, _ = mounts.mount(f"s3://{bucket}", None, str(tiny / "cache"), "--cache-size", "4MiB")
        data = os.urandom(MiB)
        with pytest.raises(OSError) as e:
            with open(f"{mp}/too-big.bin", "wb") as f:
                for _ in range(20):
                    f.write(data)
        assert e.value.errno == errno.ENOSPC
        # Its close failed, so nothing of it was acknowledged: it is not kept, and never uploaded (the kernel
        # may still know the name for the metadata TTL; an unlink of it then says ENOENT).
        try:
            os.unlink(f"{mp}/too-big.bin")
        except FileNotFoundError:
            pass
        # The daemon is alive and the mount still works once there is room.
        with open(f"{mp}/ok.bin", "wb") as f:
            f.write(b"fits")
        flush(mounts, mp)
        assert s3_bytes(server, bucket, "ok.bin") == b"fits"
        assert "too-big.bin" not in s3_keys(server, bucket)
        mounts.unmount(mp)
    finally:
        subprocess.run(["umount", "-l", str(tiny)])


def test_rename_files_and_directories(server, bucket, mounts):
    server.s3.put_object(Bucket=bucket, Key="old/a.bin", Body=b"a" * 5000)
    server.s3.put_object(Bucket=bucket, Key="old/sub/b.bin", Body=b"b" * 7000)
    server.s3.put_object(Bucket=bucket, Key="clean.bin", Body=b"clean")
    mp, _ = mounts.mount(f"s3://{bucket}")
    # Write-temp-then-rename, before the upload: a local move, one upload, to the final name only.
    data = os.urandom(3 * MiB)
    with open(f"{mp}/ckpt.tmp", "wb") as f:
        f.write(data)
    os.rename(f"{mp}/ckpt.tmp", f"{mp}/ckpt.bin")
    assert not os.path.exists(f"{mp}/ckpt.tmp")
    with open(f"{mp}/ckpt.bin", "rb") as f:
        assert sha(f.read()) == sha(data)
    # A file only in S3: copied server-side.
    os.rename(f"{mp}/clean.bin", f"{mp}/renamed.bin")
    # A directory with objects in S3 and a file not uploaded yet.
    with open(f"{mp}/old/new.bin", "wb") as f:
        f.write(b"new")
    os.rename(f"{mp}/old", f"{mp}/moved")
    assert sorted(os.listdir(f"{mp}/moved")) == ["a.bin", "new.bin", "sub"]
    with open(f"{mp}/moved/sub/b.bin", "rb") as f:
        assert f.read() == b"b" * 7000
    # Replace an existing file (os.replace).
    with open(f"{mp}/x.tmp", "wb") as f:
        f.write(b"v2")
    os.replace(f"{mp}/x.tmp", f"{mp}/renamed.bin")
    flush(mounts, mp)
    keys = set(s3_keys(server, bucket))
    assert keys == {"ckpt.bin", "renamed.bin", "moved/a.bin", "moved/sub/b.bin", "moved/new.bin"}, keys
    assert sha(s3_bytes(server, bucket, "ckpt.bin")) == sha(data)
    assert s3_bytes(server, bucket, "renamed.bin") == b"v2"
    assert s3_bytes(server, bucket, "moved/new.bin") == b"new"
    assert s3_bytes(server, bucket, "moved/a.bin") == b"a" * 5000
    assert status(mounts, mp)["putRequests"] == 3, "write-temp-then-rename uploads once per file"


def test_overwrite_in_place_fetches_only_what_it_needs(server, bucket, mounts):
    """Opening an existing object for writing downloads nothing; a small write fetches only the blocks it
    touches; close() fetches the rest from the same object version (what it acknowledges is then all on local
    disk)."""
    rng = random.Random(7)
    data = bytearray(rng.randbytes(48 * MiB))
    server.s3.put_object(Bucket=bucket, Key="weights.bin", Body=bytes(data))
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "60")
    with open(os.path.join(mp, "weights.bin"), "r+b", buffering=0) as f:
        f.seek(10 * MiB + 5)
        f.write(b"x" * 100)
        f.seek(30 * MiB)
        f.write(b"y" * (2 * MiB))  # two whole blocks: never fetched
        before = status(mounts, mp)
        assert before["bytesDownloaded"] <= 2 * MiB, before
    data[10 * MiB + 5:10 * MiB + 105] = b"x" * 100
    data[30 * MiB:32 * MiB] = b"y" * (2 * MiB)
    closed = status(mounts, mp)
    assert 44 * MiB <= closed["bytesDownloaded"] <= 48 * MiB, closed
    with open(os.path.join(mp, "weights.bin"), "rb") as f:
        assert sha(f.read()) == sha(bytes(data)), "reads through the mount see old and new bytes"
    flush(mounts, mp)
    assert sha(s3_bytes(server, bucket, "weights.bin")) == sha(bytes(data))
    # Opened for writing and closed without a change: nothing is uploaded.
    etag = server.s3.head_object(Bucket=bucket, Key="weights.bin")["ETag"]
    with open(os.path.join(mp, "weights.bin"), "r+b"):
        pass
    flush(mounts, mp)
    assert server.s3.head_object(Bucket=bucket, Key="weights.bin")["ETag"] == etag


def test_an_in_place_change_stays_whole_when_another_client_replaces_the_object(server, bucket, mounts):
    """A file changed in place is acknowledged with every byte it did not rewrite: another client replacing
    the object after close() makes the upload a conflict, and the local copy stays whole (readable, and
    uploaded whole under a new name). Replaced before close(), the bytes not rewritten are gone: close()
    fails with EIO and nothing of the change goes to S3."""
    rng = random.Random(8)
    data = bytearray(rng.randbytes(6 * MiB + 77))
    server.s3.put_object(Bucket=bucket, Key="after.bin", Body=bytes(data))
    server.s3.put_object(Bucket=bucket, Key="before.bin", Body=bytes(data))
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "60")
    with open(os.path.join(mp, "after.bin"), "r+b") as f:
        f.seek(3 * MiB + 1)
        f.write(b"mine")
    data[3 * MiB + 1:3 * MiB + 5] = b"mine"
    server.s3.put_object(Bucket=bucket, Key="after.bin", Body=b"theirs")
    r = mounts.run("flush", mp, "--timeout", "30", timeout=60)
    assert r.returncode != 0 and "conflict" in r.stderr, r.stderr
    with open(os.path.join(mp, "after.bin"), "rb") as f:
        assert sha(f.read()) == sha(bytes(data)), "the acknowledged local copy is whole"
    os.rename(os.path.join(mp, "after.bin"), os.path.join(mp, "after.bin.mine"))
    flush(mounts, mp)
    assert sha(s3_bytes(server, bucket, "after.bin.mine")) == sha(bytes(data))
    assert s3_bytes(server, bucket, "after.bin") == b"theirs"

    f = open(os.path.join(mp, "before.bin"), "r+b", buffering=0)
    f.write(b"z" * MiB)  # block 0 whole: nothing fetched yet
    server.s3.put_object(Bucket=bucket, Key="before.bin", Body=b"theirs too")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    flush(mounts, mp)
    assert s3_bytes(server, bucket, "before.bin") == b"theirs too"
    with open(os.path.join(mp, "before.bin"), "rb") as f:
        assert f.read() == b"theirs too"


def test_a_change_in_s3_meanwhile_is_a_conflict_not_an_overwrite(server, bucket, mounts):
    server.s3.put_object(Bucket=bucket, Key="best.ckpt", Body=b"epoch 1")
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "60")
    path = os.path.join(mp, "best.ckpt")
    with open(path, "wb") as f:
        f.write(b"epoch 2 from this machine")
    server.s3.put_object(Bucket=bucket, Key="best.ckpt", Body=b"epoch 2 from another machine")
    r = mounts.run("flush", mp, "--timeout", "30", timeout=60)
    assert r.returncode != 0
    assert "best.ckpt" in r.stderr and "conflict" in r.stderr, r.stderr
    assert s3_bytes(server, bucket, "best.ckpt") == b"epoch 2 from another machine"
    st = status(mounts, mp)
    assert [f["state"] for f in st["writeBack"]["failures"]] == ["conflict"], st
    with open(path, "rb") as f:
        assert f.read() == b"epoch 2 from this machine", "the local copy is kept"
    os.rename(path, os.path.join(mp, "best.ckpt.mine"))
    flush(mounts, mp)
    assert s3_bytes(server, bucket, "best.ckpt.mine") == b"epoch 2 from this machine"
    assert s3_bytes(server, bucket, "best.ckpt") == b"epoch 2 from another machine"
    with open(path, "rb") as f:
        assert f.read() == b"epoch 2 from another machine", "the old name shows the other writer's object again"


def test_a_large_file_goes_up_while_it_is_written_and_a_crash_leaves_nothing_behind(server, bucket, mounts):
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--upload-while-writing")
    rng = random.Random(11)
    data = rng.randbytes(80 * MiB + 4321)
    f = open(f"{mp}/ckpt.pt", "wb", buffering=0)
    for i in range(0, 64 * MiB, MiB):
        f.write(data[i:i + MiB])
    # Still open: parts are on their way, in an open multipart upload; nothing is visible under the key.
    assert wait_until(lambda: any(p["sentBytes"] >= 32 * MiB for p in status(mounts, mp)["writeBack"]["pending"]), 30), \
        status(mounts, mp)
    uploads = open_multipart(server, bucket)
    assert [u["Key"] for u in uploads] == ["ckpt.pt"], (uploads, status(mounts, mp))
    assert s3_keys(server, bucket) == []
    for i in range(64 * MiB, len(data), MiB):
        f.write(data[i:i + MiB])
    f.close()
    flush(mounts, mp)
    assert sha(s3_bytes(server, bucket, "ckpt.pt")) == sha(data)
    assert open_multipart(server, bucket) == []

    # A rewrite below what went up (HDF5 rewriting its header): the parts are dropped, the file lands exact.
    f = open(f"{mp}/model.h5", "wb", buffering=0)
    for i in range(0, 64 * MiB, MiB):
        f.write(data[i:i + MiB])
    assert wait_until(lambda: len(open_multipart(server, bucket)) == 1, 30)
    f.seek(100)
    f.write(b"\xab" * 512)
    f.close()
    flush(mounts, mp)
    assert sha(s3_bytes(server, bucket, "model.h5")) == sha(data[:100] + b"\xab" * 512 + data[612:64 * MiB])
    assert wait_until(lambda: open_multipart(server, bucket) == [], 10)

    # The daemon killed while a file is being written: it was never acknowledged (no close returned), so it
    # does not appear, and the next mount aborts the upload that was under way. (No process may be started
    # while the file is open: the child's close-on-exec of the descriptor is a close() the mount sees.)
    pid = daemon_pid(mp)
    f = open(f"{mp}/crash.pt", "wb", buffering=0)
    for i in range(0, 48 * MiB, MiB):
        f.write(data[i:i + MiB])
    assert wait_until(lambda: len(open_multipart(server, bucket)) == 1, 30)
    os.kill(pid, signal.SIGKILL)
    try:
        f.close()
    except OSError:
        pass
    kill9_cleanup(mp)
    mounts.active.remove(mp)
    mp, _ = mounts.mount(f"s3://{bucket}", mp, cache, "--upload-while-writing")
    assert open_multipart(server, bucket) == []
    assert sorted(s3_keys(server, bucket)) == ["ckpt.pt", "model.h5"]
    assert not os.path.exists(f"{mp}/crash.pt")
