"""Checkpoint history on versioned buckets (issue 18): `ckptfs versions` and `ckptfs restore` through a real
mount of a versioned SeaweedFS bucket, checked from outside with boto3 (version ids, bytes by sha256) and by
reading through the mount."""
import json
import os

from test_correctness import read
from test_write_back import flush, sha


def save(path, data):
    """A save that is durable when it returns (fsync before close): one S3 version per save."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def s3_versions(server, bucket, key):
    """Versions and delete markers of `key`, newest first, as boto3 sees them: (id, is delete marker, is latest)."""
    r = server.s3.list_object_versions(Bucket=bucket, Prefix=key)
    out = [(v["VersionId"], False, v["IsLatest"], v["LastModified"]) for v in r.get("Versions", []) if v["Key"] == key]
    out += [(v["VersionId"], True, v["IsLatest"], v["LastModified"]) for v in r.get("DeleteMarkers", []) if v["Key"] == key]
    return sorted(out, key=lambda v: v[3], reverse=True)


def ckptfs_versions(mounts, path):
    r = mounts.run("versions", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_every_save_is_a_version_and_restore_makes_an_earlier_one_the_newest(server, bucket, mounts):
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, _ = mounts.mount(f"s3://{bucket}")
    os.mkdir(f"{mp}/run")
    saves = [os.urandom(100_000 + i) for i in range(5)]
    for data in saves:
        save(f"{mp}/run/model.pt", data)
    h = ckptfs_versions(mounts, f"{mp}/run/model.pt")
    assert h["path"] == "run/model.pt" and h["key"] == "run/model.pt" and h["versioned"] is True
    listed = [v for v in h["versions"]]
    assert [v["size"] for v in listed] == [len(d) for d in reversed(saves)], listed
    assert [v["isLatest"] for v in listed] == [True, False, False, False, False]
    # The same ids as S3's own listing.
    assert {v["versionId"] for v in listed} == {v[0] for v in s3_versions(server, bucket, "run/model.pt")}
    text = mounts.run("versions", f"{mp}/run/model.pt")
    assert text.returncode == 0 and "latest" in text.stdout and listed[0]["versionId"] in text.stdout, text.stdout

    # Restore the second save: S3 serves it as the newest, the mount reads it at once, and nothing is lost.
    second = listed[3]["versionId"]
    assert sha(server.s3.get_object(Bucket=bucket, Key="run/model.pt", VersionId=second)["Body"].read()) == sha(saves[1])
    assert sha(read(f"{mp}/run/model.pt")) == sha(saves[4])
    r = mounts.run("restore", f"{mp}/run/model.pt", "--version", second)
    assert r.returncode == 0, r.stderr
    assert "restored version" in r.stderr, r.stderr
    assert sha(server.s3.get_object(Bucket=bucket, Key="run/model.pt")["Body"].read()) == sha(saves[1])
    assert sha(read(f"{mp}/run/model.pt")) == sha(saves[1])
    assert os.stat(f"{mp}/run/model.pt").st_size == len(saves[1])
    after = ckptfs_versions(mounts, f"{mp}/run/model.pt")["versions"]
    assert len(after) == 6 and after[0]["isLatest"] and after[0]["size"] == len(saves[1])
    # Restoring the newest changes nothing.
    r = mounts.run("restore", f"{mp}/run/model.pt", "--version", after[0]["versionId"])
    assert r.returncode == 0 and "already the newest" in r.stderr, r.stderr
    assert len(s3_versions(server, bucket, "run/model.pt")) == 6

    # A later save is a version after the restored one.
    save(f"{mp}/run/model.pt", b"epoch 6")
    assert server.s3.get_object(Bucket=bucket, Key="run/model.pt")["Body"].read() == b"epoch 6"


def test_a_deleted_file_shows_its_delete_marker_and_restores_by_time(server, bucket, mounts):
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, _ = mounts.mount(f"s3://{bucket}")
    save(f"{mp}/ckpt.pt", b"first")
    save(f"{mp}/ckpt.pt", b"second")
    os.unlink(f"{mp}/ckpt.pt")
    flush(mounts, mp)
    assert not os.path.exists(f"{mp}/ckpt.pt")
    h = ckptfs_versions(mounts, f"{mp}/ckpt.pt")["versions"]
    assert [(v["isDeleteMarker"], v["isLatest"]) for v in h] == [(True, True), (False, False), (False, False)], h
    # A delete marker cannot be restored; a version id that does not exist is named.
    r = mounts.run("restore", f"{mp}/ckpt.pt", "--version", h[0]["versionId"])
    assert r.returncode != 0 and "delete marker" in r.stderr, r.stderr
    r = mounts.run("restore", f"{mp}/ckpt.pt", "--version", "no-such-version")
    assert r.returncode != 0 and "no version no-such-version" in r.stderr, r.stderr
    # --time: the newest version written at or before that time (the second save).
    r = mounts.run("restore", f"{mp}/ckpt.pt", "--time", h[1]["lastModified"])
    assert r.returncode == 0, r.stderr
    assert server.s3.get_object(Bucket=bucket, Key="ckpt.pt")["Body"].read() == b"second"
    assert read(f"{mp}/ckpt.pt") == b"second"
    assert "ckpt.pt" in os.listdir(mp)
    r = mounts.run("restore", f"{mp}/ckpt.pt", "--time", "2000-01-01T00:00:00Z")
    assert r.returncode != 0 and "no version written at or before" in r.stderr, r.stderr


def test_local_versions_are_listed_and_block_a_restore_until_flushed(server, bucket, mounts):
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "60")
    save(f"{mp}/m.pt", b"in S3")
    with open(f"{mp}/m.pt", "wb") as f:
        f.write(b"only here")
    h = ckptfs_versions(mounts, f"{mp}/m.pt")["versions"]
    assert h[0].get("versionId") is None and h[0]["localState"] and h[0]["size"] == len(b"only here"), h
    assert h[1]["isLatest"] and h[1]["size"] == len(b"in S3")
    r = mounts.run("restore", f"{mp}/m.pt", "--version", h[1]["versionId"])
    assert r.returncode != 0 and "ckptfs flush" in r.stderr, r.stderr
    assert read(f"{mp}/m.pt") == b"only here"
    flush(mounts, mp)
    assert server.s3.get_object(Bucket=bucket, Key="m.pt")["Body"].read() == b"only here"


def test_versions_names_what_is_wrong(server, bucket, mounts):
    mp, _ = mounts.mount(f"s3://{bucket}")  # not versioned
    save(f"{mp}/plain.pt", b"x")
    r = mounts.run("versions", f"{mp}/plain.pt")
    assert r.returncode == 0, r.stderr
    assert "put-bucket-versioning" in r.stderr, r.stderr
    r = mounts.run("versions", f"{mp}/missing.pt")
    assert r.returncode != 0 and "no version of missing.pt" in r.stderr, r.stderr
    r = mounts.run("restore", f"{mp}/plain.pt")
    assert r.returncode != 0 and "--version ID or --time T" in r.stderr, r.stderr
    r = mounts.run("restore", f"{mp}/plain.pt", "--time", "yesterday")
    assert r.returncode != 0 and "ISO 8601" in r.stderr, r.stderr
    r = mounts.run("versions", "/tmp")
    assert r.returncode != 0 and "not on a ckptfs mount" in r.stderr, r.stderr


def test_the_versions_view_reads_every_version_with_plain_file_io_and_is_read_only(server, bucket, mounts):
    import errno
    import mmap
    import re
    import subprocess
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, cache = mounts.mount(f"s3://{bucket}")
    os.mkdir(f"{mp}/run")
    saves = [os.urandom(3 * (1 << 20) + i) for i in range(3)]
    for data in saves:
        save(f"{mp}/run/model.pt", data)
    view = f"{mp}/run/model.pt@versions"
    names = sorted(os.listdir(view))
    assert len(names) == 3, names
    # STAMP[-NN]_VERSIONID.pt, NN when saves share a second (these three may).
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ(-\d\d)?_[^/]+\.pt", n) for n in names), names
    ids = {v[0] for v in s3_versions(server, bucket, "run/model.pt")}
    # Oldest first, each byte-exact with its save and with S3's own version of that id.
    for name, data in zip(names, saves):
        assert sha(read(f"{view}/{name}")) == sha(data), name
        vid = name.split("_", 1)[1][:-3]
        assert vid in ids
        assert sha(server.s3.get_object(Bucket=bucket, Key="run/model.pt", VersionId=vid)["Body"].read()) == sha(data)
        assert os.stat(f"{view}/{name}").st_size == len(data)
    with open(f"{view}/{names[0]}", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[1000:2000] == saves[0][1000:2000]
    # Invisible to listings and tree walks; the file itself is unchanged.
    assert os.listdir(f"{mp}/run") == ["model.pt"]
    found = subprocess.run(["find", mp], capture_output=True, text=True).stdout
    assert "@versions" not in found, found
    assert sha(read(f"{mp}/run/model.pt")) == sha(saves[2])
    # Read-only.
    for attempt in (lambda: open(f"{view}/{names[0]}", "r+b"), lambda: open(f"{view}/new.pt", "wb"),
                    lambda: os.unlink(f"{view}/{names[0]}"), lambda: os.mkdir(f"{view}/d"),
                    lambda: os.rename(f"{view}/{names[0]}", f"{mp}/run/x.pt"), lambda: os.truncate(f"{view}/{names[1]}", 0),
                    lambda: os.utime(f"{view}/{names[0]}", (1, 1)), lambda: os.chmod(f"{view}/{names[0]}", 0o600),
                    # A file named like a view (outside testing round 7: it was created, then unreadable: EISDIR).
                    lambda: open(f"{mp}/run/other.pt@versions", "wb")):
        try:
            attempt()
            raise AssertionError("a change in the versions view was allowed")
        except OSError as e:
            assert e.errno == errno.EROFS, e
    try:
        open(f"{mp}/run/model.pt@versions", "wb")
        raise AssertionError("a file was created over a versions view")
    except OSError as e:
        assert e.errno == errno.EISDIR, e
    assert len(s3_versions(server, bucket, "run/model.pt")) == 3
    # A file without versions has no view; a name that is not a version is not found.
    assert not os.path.exists(f"{mp}/run/other.pt@versions")
    assert not os.path.exists(f"{view}/2000-01-01T00-00-00Z_deadbeef.pt")
    # After a remount over the same cache the versions read from it, with no GET.
    mounts.unmount(mp)
    mp2, _ = mounts.mount(f"s3://{bucket}", None, cache)
    before = server.settled(lambda: server.gets(bucket))
    for name, data in zip(names, saves):
        assert sha(read(f"{mp2}/run/model.pt@versions/{name}")) == sha(data)
    assert server.settled(lambda: server.gets(bucket)) == before


def test_a_save_that_lands_while_a_restore_runs_is_never_overwritten(server, bucket, mounts, proxy):
    import threading
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = server.s3.put_object(Bucket=bucket, Key="m.pt", Body=b"epoch 1")
    server.s3.put_object(Bucket=bucket, Key="m.pt", Body=b"epoch 2")
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}")
    # The restore lists the versions; while its answer is held, another client saves epoch 3.
    proxy.hold_answers(["ListObjectVersions"])
    out = []
    t = threading.Thread(target=lambda: out.append(mounts.run("restore", f"{mp}/m.pt", "--version", old["VersionId"])))
    t.start()
    assert proxy.wait(held_answers=1, timeout=10), proxy.stats()
    server.s3.put_object(Bucket=bucket, Key="m.pt", Body=b"epoch 3")
    proxy.release_answers()
    t.join(30)
    r = out[0]
    assert r.returncode != 0 and "changed in S3 while it was being restored" in r.stderr, r.stderr
    assert server.s3.get_object(Bucket=bucket, Key="m.pt")["Body"].read() == b"epoch 3"
    assert len(s3_versions(server, bucket, "m.pt")) == 3
    # Asked again, it restores over the newest it now sees.
    r = mounts.run("restore", f"{mp}/m.pt", "--version", old["VersionId"])
    assert r.returncode == 0, r.stderr
    assert server.s3.get_object(Bucket=bucket, Key="m.pt")["Body"].read() == b"epoch 1"


def test_keep_every_version_uploads_each_save_in_order(server, bucket, mounts):
    import time
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # A long upload delay: every save is still waiting when the next one closes.
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--keep-every-version", "--upload-delay", "2")
    saves = [os.urandom(200_000 + i) for i in range(5)]
    for data in saves:
        with open(f"{mp}/model.pt", "wb") as f:  # torch.save's open, write, close: no fsync
            f.write(data)
        time.sleep(0.1)
    flush(mounts, mp)
    versions = s3_versions(server, bucket, "model.pt")
    assert len(versions) == 5, versions
    # Oldest to newest, each byte-exact with its save, the newest the latest.
    for (vid, _, latest, _), data in zip(reversed(versions), saves):
        got = server.s3.get_object(Bucket=bucket, Key="model.pt", VersionId=vid)["Body"].read()
        assert sha(got) == sha(data)
    assert versions[0][2] and sha(read(f"{mp}/model.pt")) == sha(saves[-1])
    # The same five through the versions view.
    view = sorted(os.listdir(f"{mp}/model.pt@versions"))
    assert [sha(read(f"{mp}/model.pt@versions/{n}")) for n in view] == [sha(d) for d in saves]
    # Without the option the waiting saves are replaced: fewer versions than saves.
    mounts.unmount(mp)
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--upload-delay", "2")
    for data in saves:
        with open(f"{mp}/other.pt", "wb") as f:
            f.write(data)
    flush(mounts, mp)
    assert len(s3_versions(server, bucket, "other.pt")) < 5
    assert sha(server.s3.get_object(Bucket=bucket, Key="other.pt")["Body"].read()) == sha(saves[-1])
