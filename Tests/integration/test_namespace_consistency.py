"""What the namespace shows stays consistent with S3 (issue 13, kinds 6 to 8), through real mounts of a real
S3 server, checked from outside with boto3 and sha256:

- kind 6: an object another client overwrites reads whole and new after a reopen, never as a mix of the old
  pages the kernel kept and the new object;
- kind 7: a file's mtime is the one its writer stored (x-amz-meta-mtime), whichever way the file is reached;
- kind 8: a name or key S3 cannot store is refused with ENAMETOOLONG when it is made, never acknowledged.
"""
import errno
import hashlib
import os
import random
import stat
import subprocess
import time

import pytest

from test_write_back import MiB, flush, s3_bytes, s3_keys, sha


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def past_revalidation_window():
    """An open revalidates (HEAD) an object unless it was checked within the last second (README, `open`):
    there is no event for "a second has passed", so the test lets it pass. Not a synchronisation."""
    time.sleep(1.2)


# Kind 6: a changed object reads as a mix.

@pytest.mark.parametrize("case", ["small-read-whole", "large-read-in-part", "grows", "shrinks", "held-open",
                                  "reopened-for-writing"])
def test_an_object_overwritten_elsewhere_reads_whole_and_new_after_reopen(server, bucket, mounts, case):
    rng = random.Random(case)
    sizes = {"small-read-whole": (40_000, 40_000), "large-read-in-part": (3 * MiB, 3 * MiB),
             "grows": (100_000, 3 * MiB + 5), "shrinks": (3 * MiB + 5, 100_000), "held-open": (3 * MiB, 3 * MiB),
             "reopened-for-writing": (2 * MiB, 2 * MiB)}
    old_size, new_size = sizes[case]
    old, new = rng.randbytes(old_size), rng.randbytes(new_size)
    server.s3.put_object(Bucket=bucket, Key="ckpt.pt", Body=old)
    mp, _ = mounts.mount(f"s3://{bucket}")
    p = os.path.join(mp, "ckpt.pt")

    # Read it on the mount (whole, or its first 1.1 MiB), so the kernel holds its pages.
    held = open(p, "rb")
    assert held.read(min(old_size, 1100 * 1024)) == old[:min(old_size, 1100 * 1024)]
    if case != "held-open":
        held.close()

    server.s3.put_object(Bucket=bucket, Key="ckpt.pt", Body=new)  # another client overwrites it
    past_revalidation_window()

    if case == "reopened-for-writing":
        # A write in place after the change lands on the new object: the rest of the page it touches, and
        # every other byte, must come from the new version, not from the old pages the kernel kept.
        with open(p, "r+b") as f:
            f.seek(100)
            f.write(b"patched")
        new = new[:100] + b"patched" + new[107:]
        flush(mounts, mp)
        assert sha(s3_bytes(server, bucket, "ckpt.pt")) == sha(new)
    with open(p, "rb") as f:
        got = f.read()
        assert os.fstat(f.fileno()).st_size == new_size
    assert len(got) == new_size, f"read {len(got)} bytes of a {new_size}-byte object"
    assert sha(got) == sha(new), "a reopen after the change must return exactly the new object"
    assert os.stat(p).st_size == new_size

    if case == "held-open":
        # The handle opened before the change keeps its version: its reads return old bytes or fail with
        # ESTALE (the object it pinned is gone), never new bytes.
        try:
            rest = held.read()
            assert old[1100 * 1024:].startswith(rest)
        except OSError as e:
            assert e.errno == errno.ESTALE
        held.close()
        assert sha(file_bytes(p)) == sha(new)



# Kind 7: attributes depend on the access path.

STORED = {"d/a.bin": 1_000_000_000, "d/b.bin": 1_234_567_890}


def stat_by_name(mp):
    return {k: os.stat(os.path.join(mp, k)).st_mtime for k in STORED}


def stat_after_listdir(mp):
    os.listdir(os.path.join(mp, "d"))  # a plain listing first: the names come without attributes
    return stat_by_name(mp)


def stat_while_listing(mp):
    # `ls -l`: the kernel reads the directory with readdirplus (attributes with each entry) where it can.
    with os.scandir(os.path.join(mp, "d")) as it:
        return {"d/" + e.name: e.stat().st_mtime for e in it if "d/" + e.name in STORED}


def ls_l(mp):
    out = subprocess.run(["ls", "-l", "--time-style=+%s", os.path.join(mp, "d")], capture_output=True, text=True,
                         check=True).stdout
    return {"d/" + line.split()[-1]: float(line.split()[-2]) for line in out.splitlines()[1:]
            if "d/" + line.split()[-1] in STORED}


def stat_many_by_name(mp):
    # Lookups that keep missing in one directory list it, and the listing answers the lookups after it.
    for i in range(5):
        os.stat(os.path.join(mp, "d", f"filler-{i}"))
    return stat_by_name(mp)


@pytest.mark.parametrize("reach", [stat_by_name, stat_after_listdir, stat_while_listing, ls_l, stat_many_by_name])
def test_a_files_mtime_is_the_stored_one_whichever_way_it_is_reached(server, bucket, mounts, reach):
    for key, t in STORED.items():
        server.s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), Metadata={"mtime": str(t)})
    for i in range(5):
        server.s3.put_object(Bucket=bucket, Key=f"d/filler-{i}", Body=b"f")  # no stored mtime: Last-Modified
    mp, _ = mounts.mount(f"s3://{bucket}")
    assert reach(mp) == {k: float(t) for k, t in STORED.items()}
    # Whatever came first, every way agrees afterwards, and so do files without a stored mtime.
    assert stat_while_listing(mp) == stat_by_name(mp) == {k: float(t) for k, t in STORED.items()}
    last_modified = server.s3.head_object(Bucket=bucket, Key="d/filler-3")["LastModified"].timestamp()
    assert os.stat(os.path.join(mp, "d", "filler-3")).st_mtime == last_modified


def test_mtimes_set_by_cp_p_survive_upload_and_remount_for_ls_and_find(server, bucket, mounts, tmp_path):
    mp, _ = mounts.mount(f"s3://{bucket}")
    os.mkdir(os.path.join(mp, "src"))
    for i in range(20):
        p = os.path.join(mp, "src", f"f{i:02d}.o")
        with open(p, "wb") as f:
            f.write(b"%d" % i)
        os.utime(p, (1_500_000_000 + i, 1_500_000_000 + i))  # what `tar x`, `cp -p`, `rsync -t` do
    flush(mounts, mp)
    mounts.unmount(mp)
    ref = tmp_path / "ref"
    ref.write_bytes(b"")
    os.utime(ref, (1_500_000_009.5, 1_500_000_009.5))

    mp2, _ = mounts.mount(f"s3://{bucket}")  # a new mount with an empty cache
    listed = ls_l_dir(os.path.join(mp2, "src"))
    assert listed == {f"f{i:02d}.o": 1_500_000_000 + i for i in range(20)}
    newer = subprocess.run(["find", os.path.join(mp2, "src"), "-type", "f", "-newer", str(ref)], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(os.path.basename(p) for p in newer) == [f"f{i:02d}.o" for i in range(10, 20)]


def ls_l_dir(path):
    out = subprocess.run(["ls", "-l", "--time-style=+%s", path], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1]: int(line.split()[-2]) for line in out.splitlines()[1:]}


# Kind 8: name and key limits.

def test_names_and_keys_s3_cannot_store_are_refused_with_enametoolong(server, bucket, mounts):
    mp, _ = mounts.mount(f"s3://{bucket}/run-1")  # keys carry the mount's prefix "run-1/" (6 bytes)
    long_name = "n" * 256

    # A name over 255 bytes, whatever the call.
    for call in (lambda p: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644), os.mkdir, os.stat,
                 lambda p: os.mknod(p, 0o644 | stat.S_IFIFO)):
        with pytest.raises(OSError) as e:
            call(os.path.join(mp, long_name))
        assert e.value.errno == errno.ENAMETOOLONG
    with open(os.path.join(mp, "short"), "wb") as f:
        f.write(b"short")
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(mp, "short"), os.path.join(mp, long_name))
    assert e.value.errno == errno.ENAMETOOLONG

    # A key over 1,024 bytes: the directory below has the key prefix "run-1/" + 4 x (250 bytes + "/") minus
    # 50 bytes = 960 bytes, so a file name of 64 bytes makes a key of exactly 1,024 bytes.
    parts = ["a" * 250, "b" * 250, "c" * 250, "d" * 200]
    deep = mp
    for part in parts:
        deep = os.path.join(deep, part)
        os.mkdir(deep)
    prefix = "run-1/" + "/".join(parts) + "/"
    assert len(prefix.encode()) == 960
    fits = os.path.join(deep, "f" * 64)
    with open(fits, "wb") as f:
        f.write(b"at the limit")
    for call in (lambda p: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644), os.stat):
        with pytest.raises(OSError) as e:
            call(os.path.join(deep, "f" * 65))
        assert e.value.errno == errno.ENAMETOOLONG
    os.mkdir(os.path.join(deep, "g" * 63))  # its marker "g...g/" ends the key at 1,024 bytes
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(deep, "g" * 64))
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as e:
        os.rename(fits, os.path.join(deep, "h" * 65))
    assert e.value.errno == errno.ENAMETOOLONG

    # A directory rename whose children's keys would pass the limit moves nothing: with a child in S3
    # (uploaded), and with a child only written here.
    for name, upload in (("s", True), ("t", False)):
        d = os.path.join(deep, name)
        os.mkdir(d)
        with open(os.path.join(d, "x" * 62), "wb") as f:  # key of exactly 1,024 bytes
            f.write(name.encode())
        if upload:
            flush(mounts, mp)
        with pytest.raises(OSError) as e:
            os.rename(d, os.path.join(deep, name * 2))
        assert e.value.errno == errno.ENAMETOOLONG
        assert file_bytes(os.path.join(d, "x" * 62)) == name.encode()
        assert not os.path.exists(os.path.join(deep, name * 2))

    # Everything acknowledged can be stored: flush succeeds and S3 holds exactly it.
    flush(mounts, mp)
    assert s3_bytes(server, bucket, prefix + "f" * 64) == b"at the limit"
    assert s3_bytes(server, bucket, prefix + "s/" + "x" * 62) == b"s"
    assert s3_bytes(server, bucket, prefix + "t/" + "x" * 62) == b"t"
    assert all(len(k.encode()) <= 1024 for k in s3_keys(server, bucket))
    assert not any(k.startswith(prefix + "ss/") or k.startswith(prefix + "tt/") for k in s3_keys(server, bucket))
    assert sorted(os.listdir(deep)) == sorted(["f" * 64, "g" * 63, "s", "t"])


@pytest.mark.parametrize("reach", [stat_by_name, stat_after_listdir, stat_while_listing, ls_l])
def test_mtime_last_modified_is_one_rule_too_and_needs_no_head_after_a_listing(server, bucket, mounts, reach):
    """`--mtime last-modified`: every way shows Last-Modified (a stored mtime is ignored), and a listing
    answers `ls -l` and the opens right after it without a HEAD per file."""
    import json
    for key, t in STORED.items():
        server.s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), Metadata={"mtime": str(t)})
    for i in range(20):
        server.s3.put_object(Bucket=bucket, Key=f"d/filler-{i}", Body=b"f")
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--mtime", "last-modified")
    want = {k: server.s3.head_object(Bucket=bucket, Key=k)["LastModified"].timestamp() for k in STORED}
    assert reach(mp) == want
    assert stat_while_listing(mp) == stat_by_name(mp) == want
    mp2, _ = mounts.mount(f"s3://{bucket}", None, None, "--mtime", "last-modified")
    os.stat(os.path.join(mp2, "d"))  # the directory's own lookup (HEAD d, LIST d/)
    before = json.loads(mounts.run("status", mp2, "--json").stdout)["headRequests"]
    subprocess.run(["ls", "-l", os.path.join(mp2, "d")], check=True, capture_output=True)
    for i in range(20):
        with open(os.path.join(mp2, "d", f"filler-{i}"), "rb") as f:
            f.read()
    heads = json.loads(mounts.run("status", mp2, "--json").stdout)["headRequests"] - before
    assert heads == 0, f"{heads} HEADs for ls -l and 20 opens after it"
