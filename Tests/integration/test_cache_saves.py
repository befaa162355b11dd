"""Saves entered in the block cache as they land (`--cache-saves`, issue 19), through real mounts of a real S3
server: a checkpoint saved through the mount, unmounted, and loaded by a new mount on the same cache directory
(a training restart) is read from local disk with no GetObject; a save replaced by a newer one, here or by
another client, is never served; with --no-cache-saves the load goes to S3."""
import json
import os
import random

from test_mount_read import file_sha, sha

MiB = 1 << 20


def save(path, data):
    """What a checkpoint writer does: write, fsync (durable in S3 with the default --fsync durable), close."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for off in range(0, len(data), MiB):
            f.write(data[off:off + MiB])
        f.flush()
        os.fsync(f.fileno())


def gets_by_status(mounts, mp):
    return json.loads(mounts.run("status", mp, "--json").stdout)["getRequests"]


def test_a_saved_checkpoint_loads_after_a_remount_with_no_get(server, bucket, mounts):
    rng = random.Random(19)
    files = {
        "run/step-100/model.pt": rng.randbytes(40 * MiB + 12345),  # multipart (16 MiB parts)
        "run/step-100/optim.pt": rng.randbytes(3 * MiB + 7),       # one PUT, several blocks
        "run/step-100/meta.json": rng.randbytes(1000),             # one PUT, one block
    }
    mp, cache = mounts.mount(f"s3://{bucket}")
    for name, data in files.items():
        save(os.path.join(mp, name), data)
    status = json.loads(mounts.run("status", mp, "--json").stdout)
    assert status["getRequests"] == 0
    mounts.unmount(mp)
    for name, data in files.items():
        assert sha(server.s3.get_object(Bucket=bucket, Key=name)["Body"].read()) == sha(data), name
    before = server.settled(lambda: server.gets(bucket))
    # A restart: a new mount on the same cache directory loads the checkpoint.
    mp2, _ = mounts.mount(f"s3://{bucket}", None, cache)
    for name, data in files.items():
        assert file_sha(os.path.join(mp2, name)) == sha(data), name
    assert gets_by_status(mounts, mp2) == 0, "the load after the remount went to S3"
    assert server.settled(lambda: server.gets(bucket)) == before
    status = json.loads(mounts.run("status", mp2, "--json").stdout)
    assert status["cacheHits"] >= 45 and status["cacheMisses"] == 0, status


def test_a_save_replaced_by_a_newer_one_is_never_served(server, bucket, mounts):
    rng = random.Random(20)
    v1, v2, v3 = rng.randbytes(20 * MiB), rng.randbytes(20 * MiB), rng.randbytes(20 * MiB)
    path = "ckpt/latest.pt"
    mp, cache = mounts.mount(f"s3://{bucket}")
    save(os.path.join(mp, path), v1)
    save(os.path.join(mp, path), v2)  # the same name again: a newer version, a new ETag
    mounts.unmount(mp)
    mp, _ = mounts.mount(f"s3://{bucket}", None, cache)
    assert file_sha(os.path.join(mp, path)) == sha(v2), "the first save's blocks were served"
    assert gets_by_status(mounts, mp) == 0
    mounts.unmount(mp)
    # Another client replaces it while nothing is mounted: the remount validates the ETag and reads S3's bytes.
    server.s3.put_object(Bucket=bucket, Key=path, Body=v3)
    mp, _ = mounts.mount(f"s3://{bucket}", None, cache)
    assert file_sha(os.path.join(mp, path)) == sha(v3), "a save still in the cache was served for a changed object"
    assert gets_by_status(mounts, mp) > 0


def test_with_no_cache_saves_the_load_after_a_remount_goes_to_s3(server, bucket, mounts):
    data = random.Random(21).randbytes(5 * MiB)
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--no-cache-saves")
    save(os.path.join(mp, "a.pt"), data)
    mounts.unmount(mp)
    mp, _ = mounts.mount(f"s3://{bucket}", None, cache)
    assert file_sha(os.path.join(mp, "a.pt")) == sha(data)
    assert gets_by_status(mounts, mp) > 0
