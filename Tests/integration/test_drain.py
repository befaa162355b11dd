"""Stopping a mount without losing a write, and seeing what a flush waits for (issue 13, kinds 11 and 12).

Uploads are held by the fault proxy in front of the S3 server (Tests/Harness/s3_fault_proxy.py), which keeps
every upload request until the test releases it, so "during the drain" and "while a flush waits" are states the
test controls, not timings. Results are checked from outside with boto3 by sha256 and on the directory
underneath the mount.
"""
import errno
import hashlib
import os
import signal
import subprocess

import pytest

from conftest import UPLOADS, is_mounted, wait_until

MiB = 1 << 20


def sha(data):
    return hashlib.sha256(data).hexdigest()


def daemon_pid(mp):
    # The binary may be named otherwise (ckptfs-8ff9784): match any name containing ckptfs.
    out = subprocess.run(["pgrep", "-f", f"ckptfs[^ ]* mount .* {mp} "], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def status(mounts, mp):
    import json
    r = mounts.run("status", mp, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def mount_via(mounts, proxy, bucket, *extra):
    """Mounts through the fault proxy; the daemon's log is CACHE/ckptfs.log."""
    return mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--upload-delay", "0", *extra)


def underlying(mp):
    """What is in the directory underneath the mount point (call when it is not mounted)."""
    assert not is_mounted(mp)
    return sorted(os.listdir(mp))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_save_during_the_drain_goes_to_s3_never_underneath(server, bucket, mounts, proxy, how):
    """Kind 11: after the signal the mount keeps serving while uploads drain; a save made then is uploaded
    (or refused with an errno), and nothing lands in the directory underneath the mount point."""
    mp, _ = mount_via(mounts, proxy, bucket)
    first = os.urandom(2 * MiB)
    proxy.hold(UPLOADS)
    with open(f"{mp}/first.bin", "wb") as f:
        f.write(first)
    assert proxy.wait(held=1, timeout=30), "the upload of first.bin never started"
    pid = daemon_pid(mp)
    os.kill(pid, getattr(signal, how))
    # Wait until the daemon acted on the signal: it says it is stopping (or, before the fix, the mount is gone).
    assert wait_until(lambda: not is_mounted(mp) or (status(mounts, mp) or {}).get("stopping"), 20)
    saved = os.urandom(MiB)
    failed = None
    try:
        with open(f"{mp}/saved-on-sigterm.bin", "wb") as f:
            f.write(saved)
    except OSError as e:
        failed = e.errno
    proxy.release()
    assert wait_until(lambda: daemon_pid(mp) is None, 60), "the daemon did not exit after the drain"
    mounts.active.remove(mp)
    assert underlying(mp) == [], "a write during the drain fell through to the directory underneath"
    assert sha(server.s3.get_object(Bucket=bucket, Key="first.bin")["Body"].read()) == sha(first)
    if failed is None:
        assert sha(server.s3.get_object(Bucket=bucket, Key="saved-on-sigterm.bin")["Body"].read()) == sha(saved)
    else:
        assert failed in (errno.EROFS, errno.EIO, errno.ENOTCONN), errno.errorcode.get(failed)


def test_a_save_open_at_the_signal_is_finished_and_uploaded(server, bucket, mounts, proxy):
    """Kind 11: a save still being written when SIGTERM comes (the trainer's own handler finishing it) is
    waited for, uploaded whole, and the daemon exits after it."""
    mp, _ = mount_via(mounts, proxy, bucket)
    data = os.urandom(3 * MiB)
    f = open(f"{mp}/ckpt.bin", "wb")
    f.write(data[:MiB])
    f.flush()
    os.kill(daemon_pid(mp), signal.SIGTERM)
    assert wait_until(lambda: not is_mounted(mp) or (status(mounts, mp) or {}).get("stopping"), 20)
    f.write(data[MiB:])
    f.close()
    assert wait_until(lambda: daemon_pid(mp) is None, 60)
    mounts.active.remove(mp)
    assert underlying(mp) == []
    assert sha(server.s3.get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read()) == sha(data)


def test_unmount_returns_once_the_daemon_has_exited_and_its_cache_is_free(server, bucket, mounts):
    """After a save, the daemon still has work once the mount point is gone (entering the landed save in its
    cache, its last cache writes); `ckptfs unmount` returns only after it has exited, so the cache directory
    can be used at once by a preload without a mount (before: the daemon was still running, holding the
    cache's lock, when unmount returned)."""
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "0")
    pid = daemon_pid(mp)
    data = os.urandom(64 * MiB)
    with open(os.path.join(mp, "saved.bin"), "wb") as f:
        f.write(data)
    mounts.unmount(mp)
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "gone"), f"the daemon is still running (state {state}) after unmount returned"
    r = mounts.run("preload", f"s3://{bucket}/saved.bin", "--cache-dir", cache, "--json")
    assert r.returncode == 0, r.stderr
    got = server.s3.get_object(Bucket=bucket, Key="saved.bin")["Body"].read()
    assert sha(got) == sha(data)


def kill9(mp):
    pid = daemon_pid(mp)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(mp) is None, 10)
    # The kernel ends the connection when the dead process's files are closed, a moment after it left pgrep
    # (statfs always asks the daemon; stat may be answered from the attribute cache).
    assert wait_until(lambda: statfs_errno(mp) == errno.ENOTCONN, 10), os.strerror(statfs_errno(mp))


def statfs_errno(path):
    try:
        os.statvfs(path)
        return 0
    except OSError as e:
        return e.errno


def test_mount_takes_over_a_dead_mount_point_and_unmount_clears_one(server, bucket, mounts, proxy):
    """Kind 11: after kill -9, `ckptfs mount` on the dead mount point detaches it and mounts (files the dead
    daemon had not uploaded are uploaded from its journal); `ckptfs unmount` clears a dead mount point."""
    proxy.hold(UPLOADS)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}")
    data = os.urandom(MiB)
    with open(f"{mp}/kept.bin", "wb") as f:
        f.write(data)
    try:
        assert proxy.wait(held=1), "the upload of kept.bin never started"
        kill9(mp)
        mounts.active.remove(mp)
        r = mounts.run("mount", f"s3://{bucket}", mp, "--cache-dir", cache)
        assert r.returncode == 0, r.stderr
        mounts.active.append(mp)
        assert "dead" in r.stderr
        with open(f"{mp}/kept.bin", "rb") as f:
            assert sha(f.read()) == sha(data)
        r = mounts.run("flush", mp, "--timeout", "60", timeout=90)
        assert r.returncode == 0, r.stderr
        assert sha(server.s3.get_object(Bucket=bucket, Key="kept.bin")["Body"].read()) == sha(data)

        kill9(mp)
        r = mounts.run("unmount", mp)
        assert r.returncode == 0, r.stderr
        mounts.active.remove(mp)
        assert not is_mounted(mp)
        assert os.listdir(mp) == []
    finally:
        if is_mounted(mp):  # a failure left a dead mount behind
            subprocess.run(["umount", "-l", mp], capture_output=True)


def test_mount_refuses_a_dead_mount_point_of_another_filesystem(server, bucket, mounts, tmp_path):
    """Only a dead ckptfs mount is taken over; any other dead FUSE mount is named with the fix."""
    import ctypes
    mp = mounts.dirs()
    # A FUSE mount of another type whose "daemon" (this process's /dev/fuse fd) is gone: a dead mount.
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"other", mp.encode(), b"fuse.other", 0, opts)
    os.close(fd)
    if rc != 0:
        pytest.skip(f"cannot make a raw FUSE mount here: {os.strerror(ctypes.get_errno())}")
    try:
        r = mounts.run("mount", f"s3://{bucket}", mp, "--cache-dir", str(tmp_path / "c"))
        assert r.returncode != 0
        assert "fusermount3 -u" in r.stderr and "fuse.other" in r.stderr, r.stderr
        assert is_mounted(mp)
    finally:
        subprocess.run(["umount", "-l", mp], capture_output=True)


def test_flush_shows_what_it_waits_for(server, bucket, mounts, proxy):
    """Kind 12: a flush held by a stalled server prints progress lines naming the file, then exits 1."""
    mp, _ = mount_via(mounts, proxy, bucket)
    proxy.hold(UPLOADS)
    with open(f"{mp}/stuck.bin", "wb") as f:
        f.write(os.urandom(MiB))
    assert proxy.wait(held=1, timeout=30)
    r = mounts.run("flush", mp, "--timeout", "8", timeout=60)
    proxy.release()
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    progress = [l for l in lines if l.startswith("ckptfs: flush:")]
    assert progress, r.stderr
    assert all("stuck.bin" in l and "uploading" in l for l in progress), r.stderr
    # Then the final report, as before.
    assert any(l.startswith("ckptfs: error:") for l in lines[lines.index(progress[-1]):]), r.stderr


def test_flush_on_a_terminal_shows_one_live_line(server, bucket, mounts, proxy):
    """Kind 12: on a terminal the progress is one line rewritten in place, cleared at the end."""
    import pty
    mp, _ = mount_via(mounts, proxy, bucket)
    proxy.hold(UPLOADS)
    with open(f"{mp}/stuck.bin", "wb") as f:
        f.write(os.urandom(MiB))
    assert proxy.wait(held=1, timeout=30)
    master, slave = pty.openpty()
    p = subprocess.Popen([mounts.bin, "flush", mp, "--timeout", "4"], env=server.env(), stdin=slave,
                         stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(30) == 1
    os.close(master)
    proxy.release()
    text = out.decode(errors="replace")
    assert text.count("\r\x1b[K") >= 2, text  # rewritten in place, then cleared
    assert "stuck.bin" in text.split("ckptfs: error:")[0]
    assert "\nckptfs: flush:" not in text
