"""S3 outages through a real mount (issue 15, kind 4): the fault proxy (Tests/Harness/s3_fault_proxy.py) stops
forwarding, so S3 is unreachable for the mount while the server itself stays up for the test's checks.

While S3 is unreachable, what it confirmed within `--stale-if-error` seconds answers lookups, stat and open,
and cached blocks are read; bytes that are not cached fail with EIO once the client's retries are spent (not
a hang); uploads queued meanwhile land once S3 answers again. `--stale-if-error 0` turns that off."""
import errno
import hashlib
import os
import time

import pytest

from test_write_back import MiB, flush, s3_bytes, sha, status

# The S3 client's retries: 6 attempts, backoff 100 ms doubling (full jitter), so at most 3.1 s of waiting
# between attempts (README, "Retries").
ATTEMPTS = 6
BACKOFF = 3.1


def read(path):
    with open(path, "rb") as f:
        return f.read()


def stale_log_lines(cache):
    with open(os.path.join(cache, "ckptfs.log"), errors="replace") as f:
        return [line for line in f if "stale-if-error" in line]


def errno_of(f):
    """The errno `f()` fails with (None if it does not), and how long it took."""
    t0 = time.monotonic()
    try:
        f()
        return None, time.monotonic() - t0
    except OSError as e:
        return e.errno, time.monotonic() - t0


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_cached_files_open_and_read_during_an_outage_and_queued_uploads_land_after_it(server, bucket, mounts, proxy, mode):
    """S3 answers 503 to everything (or resets every connection): a file read before the outage opens, stats
    and reads byte-exact from the cache, with the log saying stale data was served; a file whose metadata is
    known but whose bytes are not cached opens (stale metadata) and its read fails with EIO within the
    client's retries; a name never seen fails with EIO, and so do listings and creating a new name; a file
    known before and saved during the outage is acknowledged by close() and lands byte-exact once the outage
    ends. `--metadata-ttl 0`: every lookup asks S3, so each one here goes to the proxy and is refused."""
    cached, uncached, never = os.urandom(3 * MiB + 5), os.urandom(2 * MiB), b"never looked up"
    for key, body in (("cached.bin", cached), ("uncached.bin", uncached), ("never.bin", never),
                      ("dir/in-dir.bin", cached), ("saved.bin", b"before the outage")):
        server.s3.put_object(Bucket=bucket, Key=key, Body=body)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--metadata-ttl", "0")
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
    assert sha(read(f"{mp}/dir/in-dir.bin")) == sha(cached)
    assert os.stat(f"{mp}/uncached.bin").st_size == len(uncached)
    assert os.stat(f"{mp}/saved.bin").st_size == len(b"before the outage")

    proxy.outage(mode)
    refused_before = sum(proxy.stats()["refused"].values())
    t0 = time.monotonic()
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
    took = time.monotonic() - t0
    assert os.stat(f"{mp}/cached.bin").st_size == len(cached)
    assert sha(read(f"{mp}/dir/in-dir.bin")) == sha(cached)
    assert sum(proxy.stats()["refused"].values()) > refused_before, "nothing asked S3: the outage was not tested"
    # One lookup's HEAD (and LIST) spends the client's retries before the stale answer is used.
    assert took < ATTEMPTS * 2 + BACKOFF + 5, f"a cached file took {took:.1f} s to open and read"
    assert stale_log_lines(cache), "the log does not say stale data was served"

    # Known, not cached: the open stands on stale metadata, the bytes cannot come.
    with open(f"{mp}/uncached.bin", "rb") as f:
        e, took = errno_of(lambda: f.read())
    assert e == errno.EIO, e
    assert took < 2 * (ATTEMPTS * 2 + BACKOFF) + 5, f"an uncached read took {took:.1f} s to fail"
    e, took = errno_of(lambda: os.stat(f"{mp}/never.bin"))
    assert e == errno.EIO, e
    assert took < ATTEMPTS * 2 + BACKOFF + 5, f"a lookup took {took:.1f} s to fail"
    # Not served stale (README, --stale-if-error): a listing always asks S3, and a new name's lookup, which
    # comes before its create, has nothing S3 confirmed to stand on. Both fail with EIO, never a wrong answer.
    assert errno_of(lambda: os.listdir(mp))[0] == errno.EIO
    assert errno_of(lambda: open(f"{mp}/new-in-outage.bin", "wb").close())[0] == errno.EIO

    # A save during the outage: close() acknowledges it locally; its upload fails and is retried.
    saved = os.urandom(MiB + 3)
    with open(f"{mp}/saved.bin", "wb") as f:
        f.write(saved)
    assert proxy.wait(refused={"PutObject": 1}, timeout=60), "the upload was never tried during the outage"
    puts = proxy.stats()["requests"].get("PutObject", 0)
    assert status(mounts, mp)["writeBack"]["dirtyFiles"] == 1

    proxy.restore()
    t_restore = time.monotonic()
    # The upload's retry backoff grows to 30 s between attempts (README, --stale-if-error), so it lands within
    # about that after S3 is back. The first upload request forwarded after the outage tells when it resumed.
    assert proxy.wait(requests={"PutObject": puts + 1}, timeout=60), "the upload did not resume"
    resumed = time.monotonic() - t_restore
    print(f"outage mode {mode}: the queued upload resumed {resumed:.1f} s after the outage ended")
    assert resumed < 35, resumed
    flush(mounts, mp, timeout=60)
    assert sha(s3_bytes(server, bucket, "saved.bin")) == sha(saved)
    assert sha(read(f"{mp}/uncached.bin")) == sha(uncached)


def test_a_silent_endpoint_fails_uncached_reads_within_the_request_timeouts(server, bucket, mounts, proxy):
    """An outage where requests are never answered (a blackhole): each attempt is cut after
    `--request-timeout` (2 s here), so a lookup of a name S3 never confirmed fails with EIO once the client's
    attempts are spent, not a hang; a cached file still opens and reads byte-exact after one such lookup.
    (`--metadata-ttl 1`: each lookup answered, stale or not, is trusted for a second, so the open and the
    reads after it do not ask again.)"""
    cached = os.urandom(MiB)
    server.s3.put_object(Bucket=bucket, Key="cached.bin", Body=cached)
    server.s3.put_object(Bucket=bucket, Key="never.bin", Body=b"x")
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--metadata-ttl", "1", "--request-timeout", "2")
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
    proxy.outage("blackhole")
    time.sleep(1.2)  # the metadata TTL (a clock, not an event): what the lookup above answered has expired
    bound = ATTEMPTS * 2 + BACKOFF + 5
    t0 = time.monotonic()
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
    took = time.monotonic() - t0
    assert proxy.stats()["refused"].get("HeadObject", 0) >= 1, "the open did not ask S3"
    assert took < bound, f"a cached file took {took:.1f} s to open and read (bound {bound:.0f} s)"
    assert stale_log_lines(cache)
    e, took = errno_of(lambda: os.stat(f"{mp}/never.bin"))
    assert e == errno.EIO, e
    assert took < bound, f"a lookup took {took:.1f} s to fail (bound {bound:.0f} s)"
    proxy.restore()
    assert os.stat(f"{mp}/never.bin").st_size == 1


def test_stale_if_error_zero_fails_opens_during_an_outage(server, bucket, mounts, proxy):
    """`--stale-if-error 0`: nothing stands in for S3, so during an outage even a cached file fails to open
    with EIO; once S3 answers again it opens and reads as before."""
    cached = os.urandom(MiB)
    server.s3.put_object(Bucket=bucket, Key="cached.bin", Body=cached)
    mp, cache = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--metadata-ttl", "0", "--stale-if-error", "0")
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
    proxy.outage("503")
    e, _ = errno_of(lambda: read(f"{mp}/cached.bin"))
    assert e == errno.EIO, e
    assert proxy.stats()["refused"].get("HeadObject", 0) >= 1
    assert not stale_log_lines(cache)
    proxy.restore()
    assert sha(read(f"{mp}/cached.bin")) == sha(cached)
