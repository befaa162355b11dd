"""Hardening of the command line (issue 15, kinds 5-7): bounded pre-mount checks against an endpoint that
never answers, refusal of S3 prefixes that cannot be file names and of unusable cache directories, and a
control socket that neither side trusts unless it belongs to the caller's uid (or root)."""
import os
import socket
import subprocess
import threading
import time

import pytest


class Blackhole:
    """A TCP server on loopback that accepts every connection and never sends a byte: what an S3 client
    sees from a wrong port, a hung server or a proxy that holds requests. Connections stay open until close()."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(c)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


def timed(mounts, *args, env, timeout=40):
    start = time.monotonic()
    r = mounts.run(*args, env=env, timeout=timeout)
    return r, time.monotonic() - start


# --- kind 5: timeouts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["check", "mount"])
def test_silent_endpoint_fails_within_ten_seconds_naming_it(mounts, blackhole, command):
    """An endpoint that accepts TCP but never answers: `check` and `mount` give up within 10 s (the default
    --check-timeout is 8 s), exit non-zero and name the endpoint and the fix, instead of 6 attempts x 30 s."""
    env = mounts.server.env(AWS_ENDPOINT_URL=blackhole.endpoint)
    args = ["check", "s3://bars"] if command == "check" else \
        ["mount", "s3://bars", mounts.dirs(), "--cache-dir", os.path.join(mounts.tmp, "cache")]
    r, took = timed(mounts, *args, env=env)
    assert r.returncode != 0
    assert took <= 10, f"took {took:.1f} s"
    assert blackhole.accepted, "the request never reached the silent endpoint"
    assert blackhole.endpoint in r.stderr and "did not answer within 8 s" in r.stderr, r.stderr
    assert "fix:" in r.stderr and "--check-timeout" in r.stderr, r.stderr


def test_check_timeout_option_sets_the_deadline(mounts, blackhole):
    """--check-timeout 3: the check ends after about 3 s and says so."""
    r, took = timed(mounts, "check", "s3://bars", "--check-timeout", "3",
                    env=mounts.server.env(AWS_ENDPOINT_URL=blackhole.endpoint))
    assert r.returncode != 0
    assert 2.5 <= took <= 6, f"took {took:.1f} s"
    assert "did not answer within 3 s" in r.stderr, r.stderr


def test_request_timeout_cuts_a_stalled_request(mounts, blackhole):
    """--request-timeout 2 cuts each attempt that moves no byte for 2 s: with 2 attempts (AWS_MAX_ATTEMPTS)
    the check fails after about 4 s with libcurl's stall error, well inside a 60 s --check-timeout."""
    env = mounts.server.env(AWS_ENDPOINT_URL=blackhole.endpoint, AWS_MAX_ATTEMPTS="2")
    r, took = timed(mounts, "check", "s3://bars", "--request-timeout", "2", "--check-timeout", "60", env=env)
    assert r.returncode != 0
    assert 3.5 <= took <= 9, f"took {took:.1f} s: {r.stderr}"
    assert "the last 2 seconds" in r.stderr and "after 2 attempts" in r.stderr, r.stderr


def test_timeouts_do_not_break_a_working_endpoint(mounts, bucket):
    """Short timeouts against a server that answers: check succeeds, and a mount works."""
    r = mounts.run("check", f"s3://{bucket}", "--request-timeout", "5", "--check-timeout", "5")
    assert r.returncode == 0, r.stderr
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--request-timeout", "5")
    with open(os.path.join(mp, "a.txt"), "w") as f:
        f.write("hello")
    assert mounts.run("flush", mp).returncode == 0
    assert mounts.server.s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello"
    mounts.unmount(mp)


@pytest.mark.parametrize("value,says", [("0", "must be between 1 and"), ("100000", "must be between 1 and"),
                                        ("abc", "is invalid for")])
def test_bad_timeouts_are_refused(mounts, value, says):
    for option in ["--request-timeout", "--check-timeout"]:
        r = mounts.run("check", "s3://bars", f"{option}={value}")
        assert r.returncode != 0
        assert option in r.stderr and says in r.stderr, r.stderr


# --- kind 6: bad input --------------------------------------------------------------------------------------

BAD_PREFIXES = [
    ("s3://{b}/../x", "'..' segment", "s3://{b}/x"),
    ("s3://{b}//x", "empty segment", "s3://{b}/x"),
    ("s3://{b}/run//x", "empty segment", "s3://{b}/run/x"),
    ("s3://{b}/./x", "'.' segment", "s3://{b}/x"),
    ("s3://{b}/" + "a" * 256 + "/x", "segment of 256 bytes", "s3://{b}/x"),
]


@pytest.mark.parametrize("command", ["check", "mount"])
@pytest.mark.parametrize("url,why,instead", BAD_PREFIXES)
def test_prefix_that_cannot_be_a_file_name_is_refused(mounts, bucket, command, url, why, instead):
    """A prefix whose parts cannot be file names is refused by check and mount, saying why and what to write."""
    url, instead = url.format(b=bucket), instead.format(b=bucket)
    args = ["check", url] if command == "check" else \
        ["mount", url, mounts.dirs(), "--cache-dir", os.path.join(mounts.tmp, "cache")]
    r = mounts.run(*args)
    assert r.returncode != 0, r.stdout
    assert why in r.stderr and "fix:" in r.stderr and f"e.g. {instead}" in r.stderr, r.stderr
    if command == "mount":
        assert not any(line.split()[4] == args[2] for line in open("/proc/self/mountinfo"))


@pytest.mark.parametrize("url", ["s3://{b}/run-1/", "s3://{b}/run-1/x.y/..z/...", "s3://{b}"])
def test_prefixes_that_are_file_names_are_accepted(mounts, bucket, url):
    r = mounts.run("check", url.format(b=bucket))
    assert r.returncode == 0, r.stderr


def cache_case(tmp, case):
    """A cache directory ckptfs cannot use, and the words its error must hold."""
    if case == "file":
        path = os.path.join(tmp, "cache-file")
        open(path, "w").close()
        return path, "is not a directory"
    if case == "parent-file":
        parent = os.path.join(tmp, "parent-file")
        open(parent, "w").close()
        return os.path.join(parent, "cache"), f"{parent} is a file"
    ro = os.path.join(tmp, "ro")
    os.makedirs(ro)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], check=True)
    return os.path.join(ro, "cache"), "Read-only file system"


@pytest.mark.parametrize("case", ["file", "parent-file", "read-only"])
def test_cache_dir_errors_name_the_cache_dir_and_the_fix(mounts, bucket, case):
    """An unusable --cache-dir fails the mount with a message naming the cache directory (not the log file in
    it), the reason and the fix."""
    path, reason = cache_case(mounts.tmp, case)
    try:
        r = mounts.run("mount", f"s3://{bucket}", mounts.dirs(), "--cache-dir", path)
    finally:
        if case == "read-only":
            subprocess.run(["umount", os.path.dirname(path)])
    assert r.returncode != 0
    assert f"cache directory {path}" in r.stderr and reason in r.stderr, r.stderr
    assert "fix: " in r.stderr and "--cache-dir" in r.stderr, r.stderr
    assert "log file" not in r.stderr, r.stderr
