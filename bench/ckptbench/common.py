"""What every part of the benchmark uses: where files go, units, running commands, reading files, checks.

Paths: ROOT is the repository; OUT (bench/out) holds scratch data, mount points and caches, RESULTS
(bench/results) the result files. CKPTFS_BIN is the release build (`swift build -c release`).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench", "out")
RESULTS = os.path.join(ROOT, "bench", "results")
CKPTFS_BIN = os.environ.get("CKPTFS_BIN") or os.path.join(ROOT, ".build", "release", "ckptfs")
MiB = 1 << 20

# The system under test: every ratio is this system's speed over another's.
SUBJECT = "ckptfs"


def sh(cmd, env=None, check=True, timeout=None):
    """Runs `cmd` (a list), capturing text output; raises CalledProcessError on a non-zero exit when `check`."""
    return subprocess.run(cmd, env=env, check=check, text=True, capture_output=True, timeout=timeout)


def log(*a):
    """Progress on stderr (stdout carries the tables)."""
    print(*a, flush=True, file=sys.stderr)


def drop_caches(required=False):
    """Syncs and drops the kernel's page, dentry and inode caches (needs root). Without root the suite goes on
    (`required=False`: the figures are then not cold); the standalone scripts pass `required=True` and fail
    with the OSError instead."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        if required:
            raise


def sha_file(path):
    """sha256 hex digest of a file, read unbuffered in 4 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def timed_read(path, bufsize=MiB):
    """Seconds to read the whole file unbuffered with `bufsize`-byte reads (the bytes are not kept)."""
    buf = bytearray(bufsize)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def wait_until(pred, timeout, step=0.05):
    """Calls `pred` every `step` seconds until it is true or `timeout` seconds passed; returns its last value.
    For what gives no event to wait on: a mount appearing in /proc/mounts, an object appearing in S3."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def is_mounted(path):
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Check(Exception):
    """Something read or written was wrong: aborts the run (exit 1). Timings never raise it."""


def expect(cond, what):
    if not cond:
        raise Check("CHECKSUM MISMATCH: " + what)


def require_tools(tool):
    """The release build of ckptfs and s5cmd (for the standalone scripts), or a clear exit naming what to do.
    Returns the binary's path; `tool` names the script in the message."""
    if not os.path.exists(CKPTFS_BIN):
        raise SystemExit(f"{tool}: build first: swift build -c release")
    if shutil.which("s5cmd") is None:
        raise SystemExit(f"{tool}: s5cmd not found (scripts/setup installs it)")
    return CKPTFS_BIN


def command_version(cmd):
    """The first line a version command prints (stdout, else stderr), or None if it cannot be run."""
    try:
        # 60 s: importing torch took over 10 s on the 2 shared cores at a load of 15-30, and s3torch was then
        # skipped as "not installed".
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return None
