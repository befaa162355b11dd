"""Hardening of the command line (issue 15, kinds 5-7): bounded pre-mount checks against an endpoint that
never answers, refusal of S3 prefixes that cannot be file names and of unusable cache directories, and a
control socket that neither side trusts unless it belongs to the caller's uid (or root)."""
import hashlib
import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import uuid
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
    if command == "mount" and r.returncode == 0:
        mounts.active.append(args[2])  # unmounted by the fixture
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


# --- kind 7: local security of the control socket ---------------------------------------------------------

FAKE_DAEMON = r"""
import os, socket, sys
path, owner, run_as = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chown(path, owner, -1)
os.chmod(path, 0o777)
os.setgid(run_as)
os.setuid(run_as)      # before listen(): SO_PEERCRED reports the listener's credentials at listen()
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b'{"ok":true,"notDurable":[]}\n')
    except OSError:
        pass  # the client hung up first
    c.close()
"""


@pytest.fixture(scope="module")
def other_user():
    """A throwaway local user (name, uid), deleted afterwards."""
    name = "ckt" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name, pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name])


def sock_name(mp):
    return hashlib.sha256(mp.encode()).hexdigest()[:20] + ".sock"


def run_as(user, *argv, timeout=30):
    """Runs argv as `user` with no XDG_RUNTIME_DIR (as cron or `sudo -u` would)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    return subprocess.run([shutil.which("runuser"), "-u", user, "--", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def planted(other_user, mounts, bucket):
    """A live root mount, and for `other_user` a fake daemon planted where that user's CLI looks for the
    mount's socket (/tmp/ckptfs-UID/...). Yields a function (dir_owner, socket_owner, daemon_uid) -> mountpoint."""
    name, uid = other_user
    mp, _ = mounts.mount(f"s3://{bucket}")
    d = f"/tmp/ckptfs-{uid}"
    procs = []

    def plant(dir_owner, socket_owner, daemon_uid):
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d, 0o700)
        os.chown(d, dir_owner, -1)
        os.chmod(d, 0o755 if dir_owner != uid else 0o700)
        p = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, os.path.join(d, sock_name(mp)), str(socket_owner),
                              str(daemon_uid)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return mp

    yield plant
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(d, ignore_errors=True)


NOBODY = 65534


@pytest.mark.parametrize("dir_owner,socket_owner,daemon_uid,says", [
    ("nobody", "nobody", "nobody", "socket directory /tmp/ckptfs-{uid} is owned by uid 65534"),
    ("user", "nobody", "nobody", "socket /tmp/ckptfs-{uid}/{sock} is owned by uid 65534"),
    ("user", "user", "nobody", "runs as uid 65534, not as you"),
])
def test_cli_refuses_a_control_socket_of_another_user(planted, other_user, mounts, dir_owner, socket_owner, daemon_uid, says):
    """A user's `ckptfs flush` (and `status`) finds, where it looks for the daemon's socket, a fake daemon of
    another user answering "all durable": it refuses it with a message naming the owner and the fix, whether
    the directory, the socket or only the listening process (SO_PEERCRED) belongs to someone else."""
    name, uid = other_user
    ids = {"nobody": NOBODY, "user": uid}
    mp = planted(ids[dir_owner], ids[socket_owner], ids[daemon_uid])
    for cmd in (["flush", mp], ["status", mp, "--json"]):
        r = run_as(name, mounts.bin, *cmd)
        assert r.returncode != 0, f"{cmd[0]} trusted a fake daemon: {r.stdout} {r.stderr}"
        assert says.format(uid=uid, sock=sock_name(mp)) in r.stderr and "fix:" in r.stderr, r.stderr


def test_daemon_refuses_requests_from_another_user(other_user, mounts, bucket):
    """The daemon answers only its own uid and root: another user who reaches its socket (here through a hard
    link in a directory that user can enter, the socket made 0666) gets a refusal, not the mount's status; root
    still gets it on /run/ckptfs/<sha256(mountpoint)[:20]>.sock."""
    name, uid = other_user
    mp, _ = mounts.mount(f"s3://{bucket}")
    real = "/run/ckptfs/" + sock_name(os.path.realpath(mp))
    d = tempfile.mkdtemp(prefix="ckptfs-hardening-", dir="/run")
    os.chmod(d, 0o711)
    link = os.path.join(d, "s.sock")
    os.link(real, link)
    mode = os.stat(real).st_mode & 0o7777
    os.chmod(real, 0o666)
    ask = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
           "s.sendall(b'{\"cmd\":\"status\"}\\n'); print(s.makefile().readline())")
    try:
        r = run_as(name, "/usr/bin/python3", "-c", ask, link)
    finally:
        os.chmod(real, mode)
        shutil.rmtree(d)
    assert r.returncode == 0, r.stderr
    assert "writeBack" not in r.stdout and f"uid {uid} may not control this mount" in r.stdout, r.stdout
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(real)
        s.sendall(b'{"cmd":"status"}\n')
        assert "writeBack" in json.loads(s.makefile().readline())


def test_daemon_refuses_a_socket_directory_of_another_user(other_user, mounts, bucket):
    """A user's mount whose socket directory (/tmp/ckptfs-UID) was made first by someone else fails, naming the
    directory, its owner and the fix, instead of serving (or trusting) a socket there. Root's directory,
    /run/ckptfs, is root's own and 0700 after a mount."""
    name, uid = other_user
    d = f"/tmp/ckptfs-{uid}"
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d, 0o777)
    os.chown(d, NOBODY, NOBODY)
    os.chmod(d, 0o777)
    mine = tempfile.mkdtemp(prefix="ckptfs-user-")
    os.chown(mine, uid, -1)
    mp, cache = os.path.join(mine, "mnt"), os.path.join(mine, "cache")
    os.mkdir(mp)
    os.chown(mp, uid, -1)
    env = {k: v for k, v in mounts.server.env().items() if k.startswith("AWS_")}
    try:
        r = subprocess.run([shutil.which("runuser"), "-u", name, "--", "env", *[f"{k}={v}" for k, v in env.items()], "HOME=/",
                            mounts.bin, "mount", f"s3://{bucket}", mp, "--cache-dir", cache],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            subprocess.run(["fusermount3", "-u", "-z", mp])
    finally:
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(mine, ignore_errors=True)
    assert r.returncode != 0, "mounted with a socket directory owned by someone else"
    assert f"socket directory {d} is owned by uid {NOBODY}" in r.stderr and "fix:" in r.stderr, r.stderr
    mounts.mount(f"s3://{bucket}")
    st = os.lstat("/run/ckptfs")
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and st.st_mode & 0o077 == 0


def test_the_ready_descriptor_stays_on_dev_null_once_the_mount_is_live(server, bucket, mounts):
    """`ckptfs mount` hears from its daemon on fd 3 (a pipe) that the mount is live. Once it has, the daemon keeps
    fd 3 on /dev/null for its life instead of closing it, so no file it opens later (a staged file, the journal,
    the cache's lock, libdispatch's epoll descriptor) gets that number, which a late failure report still writes
    to; the launcher's pipe is close-on-exec, so the daemon has no other end of it. Found by the breaker: when
    pipe() gave the launcher fd 3 for its read end, the spawn's close of it in the child closed the fd 3 the dup2
    had just made, the daemon wrote "OK" into and closed whatever it had opened as fd 3 by then (its epoll
    descriptor: SIGILL in _dispatch_event_loop_drain at startup; its cache lock would have let a second mount of
    the cache directory start), and the launcher reported that the daemon had exited."""
    mp, _ = mounts.mount(f"s3://{bucket}")
    with open(f"{mp}/a.bin", "wb") as f:
        f.write(b"x" * 1000)
        pid = subprocess.run(["pgrep", "-f", f"ckptfs mount .* {mp} "], capture_output=True, text=True).stdout.split()[0]
        assert os.readlink(f"/proc/{pid}/fd/3") == "/dev/null"
    r = mounts.run("flush", mp)
    assert r.returncode == 0, r.stderr
    assert os.readlink(f"/proc/{pid}/fd/3") == "/dev/null"
