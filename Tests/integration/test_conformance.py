"""Conformance runs of standard Debian tools on a real mount: `stress-ng --hdd --verify`, a few other stress-ng
file stressors with --verify, and `fio --verify=crc32c` (sequential, random, O_DIRECT, fsync, mmap and libaio
writers), each verifying what it wrote through the mount; then `ckptfs flush`, unmount, a remount with an EMPTY
cache directory, and the same files verified again (fio --verify_only, and sha256 through the mount against
sha256 recorded before and against the object read with boto3). Bounded for CI: well under 3 minutes on the
2-core test machine (about 20 s).

The tools come from Debian (`stress-ng`, `fio`), installed by scripts/setup."""
import hashlib
import os
import shutil
import subprocess

import pytest

MiB = 1 << 20

# Small fio jobs: each writes its file with crc32c verification headers in every block and reads it back
# (do_verify). randrepeat makes the random offsets the same in a later --verify_only run.
FIO_JOBS = """\
[global]
directory={directory}
verify=crc32c
verify_fatal=1
verify_dump=0
verify_state_save=0
randrepeat=1
ioengine=psync

[seq-write]
rw=write
bs=64k
size=8m

[rand-write]
rw=randwrite
bs=4k
size=4m

[rand-write-direct]
rw=randwrite
bs=16k
size=4m
direct=1

[seq-write-fsync]
rw=write
bs=256k
size=4m
fsync=8

[mmap-rand-write]
ioengine=mmap
rw=randwrite
bs=8k
size=2m

[libaio-rand-write-direct]
ioengine=libaio
iodepth=8
rw=randwrite
bs=4k
size=2m
direct=1
"""
FIO_FILES = ["seq-write.0.0", "rand-write.0.0", "rand-write-direct.0.0", "seq-write-fsync.0.0",
             "mmap-rand-write.0.0", "libaio-rand-write-direct.0.0"]


def need(tool):
    path = shutil.which(tool)
    assert path, f"{tool} is not installed (scripts/setup installs it: apt-get install {tool})"
    return path


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def s3_sha(server, bucket, key):
    return hashlib.sha256(server.s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def s3_keys(server, bucket, prefix=""):
    keys = []
    for page in server.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def flush(mounts, mp, timeout=90):
    r = mounts.run("flush", mp, "--timeout", str(timeout), timeout=timeout + 30)
    assert r.returncode == 0, f"ckptfs flush failed: {r.stdout}{r.stderr}"


def staged_files(cache):
    d = os.path.join(cache, "staging")
    if not os.path.isdir(d):
        return {}
    return {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)}


# stress-ng --hdd: each instance creates a file in the mount, unlinks it at once (it keeps the descriptor),
# writes --hdd-bytes with the chosen pattern and reads it back checking every byte (--verify). `direct`
# writes with O_DIRECT, so the bytes of the unlinked file go to the daemon and not only to the kernel's page
# cache: POSIX says an unlinked file lives until its last close.
STRESS_VARIANTS = {
    "default": [],
    "random": ["--hdd-opts", "wr-rnd,rd-rnd"],
    "iovec-fsync": ["--hdd-opts", "iovec,fsync,wr-seq,rd-seq"],
    "fdatasync-utimes": ["--hdd-opts", "fdatasync,utimes,wr-rnd,rd-seq"],
    "direct": ["--hdd-opts", "direct"],
}


@pytest.mark.parametrize("variant", list(STRESS_VARIANTS))
def test_stress_ng_hdd_verify(server, bucket, mounts, variant, tmp_path):
    mp, cache = mounts.mount(f"s3://{bucket}/stress")
    work = os.path.join(mp, "stress-" + variant)
    os.mkdir(work)
    cmd = [need("stress-ng"), "--hdd", "2", "--hdd-ops", "4000", "--hdd-bytes", "4m", "--hdd-write-size", "16k",
           *STRESS_VARIANTS[variant], "--verify", "--temp-path", work, "--timeout", "20s", "--metrics-brief"]
    r = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=90)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "successful run completed" in out, f"{' '.join(cmd)}: exit {r.returncode}\n{out[-4000:]}"
    assert "fail:" not in out, out[-4000:]
    # stress-ng removes its files and directories: nothing is left on the mount, and after a flush nothing of
    # the unlinked files reached S3 (only the marker of the directory we made).
    assert os.listdir(work) == []
    flush(mounts, mp)
    assert [k for k in s3_keys(server, bucket, "stress/") if not k.endswith("/")] == []
    mounts.unmount(mp)
    assert staged_files(cache) == {}, "staged copies of deleted files left behind after unmount"


# Other stress-ng file stressors with --verify, bounded by operation count. Most open a file, unlink it at
# once and go on using the descriptor (write, readahead after dropping the page cache, fdatasync,
# sync_file_range), as POSIX allows until the last close. (Not `--io`: it calls syncfs on every mount of the
# machine, so it fails for other mounts.)
OTHER_STRESSORS = {
    "readahead": ["--readahead", "1", "--readahead-bytes", "4m", "--readahead-ops", "200"],
    "seek": ["--seek", "1", "--seek-size", "4m", "--seek-ops", "20000"],
    "sync-file": ["--sync-file", "1", "--sync-file-bytes", "2m", "--sync-file-ops", "200"],
    "rename": ["--rename", "1", "--rename-ops", "2000"],
    "dir": ["--dir", "1", "--dir-ops", "100"],
}


@pytest.mark.parametrize("stressor", list(OTHER_STRESSORS))
def test_stress_ng_file_stressors_verify(server, bucket, mounts, stressor, tmp_path):
    mp, cache = mounts.mount(f"s3://{bucket}/stress")
    work = os.path.join(mp, stressor)
    os.mkdir(work)
    cmd = [need("stress-ng"), *OTHER_STRESSORS[stressor], "--verify", "--temp-path", work, "--timeout", "15s"]
    r = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=90)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "fail:" not in out, f"{' '.join(cmd)}: exit {r.returncode}\n{out[-4000:]}"
    assert os.listdir(work) == []
    flush(mounts, mp)
    assert [k for k in s3_keys(server, bucket, "stress/") if not k.endswith("/")] == []


def test_fio_verify_then_remount_with_empty_cache(server, bucket, mounts, tmp_path):
    mp, cache = mounts.mount(f"s3://{bucket}/fio")
    jobs = tmp_path / "jobs.fio"
    jobs.write_text(FIO_JOBS.format(directory="${FIODIR}"))
    env = dict(os.environ, FIODIR=mp)

    r = subprocess.run([need("fio"), str(jobs)], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"fio write+verify failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "verify failed" not in r.stdout + r.stderr

    names = sorted(os.listdir(mp))
    assert names == sorted(FIO_FILES), names
    before = {n: sha_file(os.path.join(mp, n)) for n in FIO_FILES}

    flush(mounts, mp)
    # In S3 byte for byte, read by another client.
    for n in FIO_FILES:
        assert s3_sha(server, bucket, f"fio/{n}") == before[n], f"{n}: the object in S3 differs from the file"
    mounts.unmount(mp)
    assert staged_files(cache) == {}, "staged copies left behind after flush and a clean unmount"

    # A new mount with an empty cache reads everything from S3.
    fresh = str(tmp_path / "empty-cache")
    assert not os.path.exists(fresh)
    mp2, _ = mounts.mount(f"s3://{bucket}/fio", None, fresh)
    assert sorted(os.listdir(mp2)) == sorted(FIO_FILES)
    for n in FIO_FILES:
        assert sha_file(os.path.join(mp2, n)) == before[n], f"{n}: differs after a remount with an empty cache"
    env2 = dict(os.environ, FIODIR=mp2)
    r = subprocess.run([need("fio"), str(jobs), "--verify_only"], cwd=str(tmp_path), env=env2, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"fio --verify_only after remount failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "verify failed" not in r.stdout + r.stderr
    # --verify_only only reads: nothing became dirty.
    flush(mounts, mp2)
    for n in FIO_FILES:
        assert s3_sha(server, bucket, f"fio/{n}") == before[n]
