"""Failures found by the outside testers' runs (pjdfstest, fsx, stress-ng, crash trials, checkpoint history by
hand), each reduced to its smallest reproduction through a real mount of a real SeaweedFS, checked with boto3."""
import os
import time

import pytest

from test_correctness import read
from test_versions import s3_versions
from test_write_back import flush, sha


def test_keep_every_version_keeps_saves_made_by_write_temp_then_rename(server, bucket, mounts):
    """`--keep-every-version` promises one S3 version per save. A save made the safe way (write `model.pt.tmp`,
    close, `os.replace` onto `model.pt`: torch.save + os.replace, safetensors/transformers' atomic saves) is a
    save of `model.pt` as much as an open-write-close of it is; 6 such saves 0.1 s apart made 1 version: the
    rename replaced the version of `model.pt` still waiting out `--upload-delay` (it was dropped, never uploaded),
    so the history the option exists for is lost for the most common checkpoint idiom."""
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--keep-every-version", "--upload-delay", "2")
    saves = [os.urandom(200_000 + i) for i in range(5)]
    for data in saves:
        with open(f"{mp}/model.pt.tmp", "wb") as f:
            f.write(data)
        os.replace(f"{mp}/model.pt.tmp", f"{mp}/model.pt")
        time.sleep(0.1)
    flush(mounts, mp)
    assert sha(read(f"{mp}/model.pt")) == sha(saves[-1])
    versions = s3_versions(server, bucket, "model.pt")
    got = [sha(server.s3.get_object(Bucket=bucket, Key="model.pt", VersionId=v[0])["Body"].read())
           for v in reversed(versions)]
    assert got == [sha(d) for d in saves], f"{len(versions)} version(s) for {len(saves)} saves"


def test_a_mount_recovers_after_a_crash_while_the_cache_disk_is_still_full(server, bucket, mounts, proxy, tmp_path):
    """S-WRITE-FULL-DISK: a full cache disk needs no remount, the journal keeps a reserve so it can always
    append, and a crash afterwards loses nothing acknowledged. But the next mount must rewrite the journal
    (recovery), and the old journal still holds its 4 MiB reserve, so on a disk that is still full (the
    neighbour that filled it is still there) `ckptfs mount` fails: "cannot start the write-back ...: No space
    left on device: cannot rewrite the journal". A daemon restarted after a crash (systemd, OOM kill) then
    cannot come back, and its acknowledged files cannot be read or uploaded, until someone frees the disk."""
    import subprocess

    from conftest import UPLOADS
    from test_write_back import kill9, s3_bytes

    disk = tmp_path / "tiny-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        cache = str(disk / "cache")
        mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, cache, "--cache-size", "1MiB")
        proxy.hold(UPLOADS)
        acked = {}
        for i in range(4):
            data = os.urandom(1 << 20)
            with open(f"{mp}/f{i}", "wb") as f:
                f.write(data)
            acked[f"f{i}"] = data
        # A neighbour takes every byte left on the cache disk.
        with open(disk / "junk", "wb") as j:
            try:
                while True:
                    j.write(b"\0" * 65536)
                    j.flush()
            except OSError:
                pass
        st = os.statvfs(disk)
        assert st.f_bavail == 0
        kill9(mp)
        mounts.active.remove(mp)
        proxy.release()
        r = mounts.run("mount", f"s3://{bucket}", mp, "--cache-dir", cache, "--cache-size", "1MiB",
                       env=server.env(AWS_ENDPOINT_URL=proxy.endpoint))
        if r.returncode == 0:
            mounts.active.append(mp)
        assert r.returncode == 0, f"the mount after the crash failed on the full disk: {r.stderr}"
        for name, data in acked.items():
            assert sha(read(f"{mp}/{name}")) == sha(data), name
        flush(mounts, mp, timeout=60)
        for name, data in acked.items():
            assert sha(s3_bytes(server, bucket, name)) == sha(data), name
        mounts.unmount(mp)
    finally:
        mounts.cleanup()
        mounts.active.clear()
        subprocess.run(["umount", "-l", str(disk)])


def kill_and_expect_exit(child, call):
    """kill -9 of `child`, waiting in `call` on the mount: it must be gone within 10 s."""
    import signal
    import subprocess
    child.send_signal(signal.SIGKILL)
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        state = open(f"/proc/{child.pid}/status").read().split("State:")[1].split("\n")[0].strip()
        raise AssertionError(f"the process waiting in {call} survived kill -9 for 10 s (state {state})")


def test_a_process_waiting_in_fsync_for_s3_can_be_killed(server, bucket, mounts, proxy):
    """`fsync()` waits until the file is in S3 (S-DUR-FSYNC). While S3 does not take the upload (an outage, a
    server whose disk is full: seen with SeaweedFS answering 500 for minutes), the writer waits in the kernel
    for the daemon's answer. The daemon did not answer FUSE's INTERRUPT: the process sat in state D and not
    even `kill -9` (nor Ctrl-C) ended it until S3 was back; a trainer stuck so could not be stopped or
    restarted. Seen with fsx's msync(MS_SYNC) during the outside tests; here uploads are held in the proxy.
    Now the interrupt is answered (EINTR) at once, and what the writer wrote (its close acknowledged it, as
    the kernel closes a killed process's files) still reaches S3 once it answers again."""
    import subprocess
    import sys

    from conftest import UPLOADS

    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}")
    proxy.hold(UPLOADS)
    code = ("import os; f = open(%r, 'wb'); f.write(b'x' * 100000); f.flush(); os.fsync(f.fileno())"
            % f"{mp}/stuck.bin")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert proxy.wait(held=1), "the upload never reached the proxy"
        time.sleep(0.5)
        assert child.poll() is None, "fsync returned before the upload landed"
        kill_and_expect_exit(child, "fsync")
    finally:
        proxy.release()
        child.wait(timeout=60)
    flush(mounts, mp)
    assert server.s3.get_object(Bucket=bucket, Key="stuck.bin")["Body"].read() == b"x" * 100000
    mounts.unmount(mp)


@pytest.mark.parametrize("call", ["stat", "read", "listdir"])
def test_a_process_waiting_for_a_silent_s3_in_stat_read_or_listdir_can_be_killed(server, bucket, mounts, proxy, call):
    """The same kind as the fsync one above, for the operations that wait on S3 to answer a reader: a lookup
    (stat of a name not known yet), a read of bytes not cached, a listing. S3 is reachable but never answers
    (the proxy's blackhole); `kill -9` must end the process at once (the daemon answers FUSE's INTERRUPT with
    EINTR), and the mount keeps working once S3 answers again."""
    import subprocess
    import sys

    data = os.urandom(3 << 20)
    server.s3.put_object(Bucket=bucket, Key="d/data.bin", Body=data)
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}")
    os.stat(f"{mp}/d/data.bin")  # known: the read below waits on its GET, not on a lookup
    code = {
        "stat": "import os; os.stat(%r)" % f"{mp}/d/not-known-yet.bin",
        "read": "open(%r, 'rb').read()" % f"{mp}/d/data.bin",
        "listdir": "import os; os.listdir(%r)" % f"{mp}/other",
    }[call]
    proxy.outage("blackhole")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.5)
        assert child.poll() is None, f"{call} returned while S3 did not answer"
        kill_and_expect_exit(child, call)
    finally:
        proxy.restore()
        child.wait(timeout=120)
    with open(f"{mp}/d/data.bin", "rb") as f:
        assert sha(f.read()) == sha(data)
    mounts.unmount(mp)


def test_names_that_are_not_utf8_are_refused_not_merged_into_one_key(server, bucket, mounts):
    """S3 keys are UTF-8 (S-NAME-LIMITS), and what S3 cannot store is refused (Principle 4). A name whose bytes
    are not UTF-8 (`a\\xff`, as a Latin-1 tool or stress-ng's filename stressor makes) was accepted and its bytes
    replaced with U+FFFD, so `a\\xff` and `a\\xfe` became the one key `a\\xef\\xbf\\xbd`: the second save silently
    replaced the first, acknowledged, file (both names then read the second's bytes), and the listing showed a
    name nobody created. They must fail instead (EINVAL), and change nothing."""
    import errno

    mp, _ = mounts.mount(f"s3://{bucket}")
    base = os.fsencode(mp)
    refused = []
    for raw, data in ((b"a\xff", b"first"), (b"a\xfe", b"second")):
        try:
            with open(base + b"/" + raw, "wb") as f:
                f.write(data)
        except OSError as e:
            refused.append(e.errno)
    for op in (lambda: os.mkdir(base + b"/d\xff"), lambda: os.rename(base + b"/ok", base + b"/b\xff")):
        with open(f"{mp}/ok", "wb") as f:
            f.write(b"ok")
        try:
            op()
        except OSError as e:
            refused.append(e.errno)
    flush(mounts, mp)
    keys = sorted(o["Key"] for o in server.s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["ok"], keys
    assert refused == [errno.EINVAL] * 4, refused
    assert sorted(os.listdir(mp)) == ["ok"]
    mounts.unmount(mp)


@pytest.mark.parametrize("change", ["unlink", "rename-over", "rename-away", "overwrite", "directory-rename"])
def test_a_file_only_in_s3_removed_or_replaced_while_open_reads_on_until_its_last_close(server, bucket, mounts, change):
    """S-UNLINK-OPEN-CLEAN: a file unlinked while open lives until its last close, as POSIX says, and POSIX
    rename over a file leaves its open descriptors reading the old file. For a file only in S3 the delete (or
    the rename's upload or copy over it, the copy and delete of a rename away, a save over it) went to S3 and a
    read of a block not cached yet failed with ENOENT or ESTALE, seen in the outside tests as an evaluation
    process loading `last.pt` while the trainer `os.replace`d the next save onto it, and a rotation deleting a
    checkpoint another process was still loading. Now the version read is kept in the block cache first.
    40 MiB: read with direct I/O (S-READ-COLD-DIRECT), so nothing comes from the page cache."""
    old, new = os.urandom(40 << 20), os.urandom(40 << 20)
    name = "run/last.pt" if change == "directory-rename" else "last.pt"
    server.s3.put_object(Bucket=bucket, Key=name, Body=old)
    mp, _ = mounts.mount(f"s3://{bucket}")
    fd = os.open(f"{mp}/{name}", os.O_RDONLY)
    try:
        assert os.pread(fd, 1 << 20, 0) == old[:1 << 20]
        if change == "unlink":
            os.unlink(f"{mp}/last.pt")
        elif change == "rename-over":
            with open(f"{mp}/last.pt.tmp", "wb") as f:
                f.write(new)
            os.replace(f"{mp}/last.pt.tmp", f"{mp}/last.pt")
        elif change == "rename-away":  # the same file under a new name: S3 gets a copy, the old key goes
            os.rename(f"{mp}/last.pt", f"{mp}/best.pt")
        elif change == "overwrite":  # another process saves over it in place (O_TRUNC)
            with open(f"{mp}/last.pt", "wb") as f:
                f.write(new)
        else:
            os.rename(f"{mp}/run", f"{mp}/run-1")
        flush(mounts, mp)
        for off in (20 << 20, 39 << 20):
            try:
                got = os.pread(fd, 1 << 20, off)
            except OSError as e:
                raise AssertionError(f"a read at {off >> 20} MiB of the open descriptor failed: {e.strerror}")
            assert got == old[off:off + (1 << 20)], f"the read at {off >> 20} MiB is not the old file's bytes"
    finally:
        os.close(fd)
