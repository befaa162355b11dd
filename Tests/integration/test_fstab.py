"""Mounting like a filesystem: /etc/fstab lines, `mount -t fuse.ckptfs`, `umount`, and systemd's readiness
notification.

mount(8) finds ckptfs either as /sbin/mount.fuse.ckptfs (a link to the binary) or through libfuse's
mount.fuse3, which runs `ckptfs` from the default PATH. Both would mean installing into /sbin or /usr/local/bin
of a machine other tests share, so each test runs in a private mount namespace (unshare -m) where an overlay
adds the links to /usr/sbin or /usr/local/bin; the FUSE mount lives in that namespace too. What lands in S3 is
checked with boto3 by sha256.
"""
import hashlib
import os
import socket
import subprocess
import time

import pytest

from conftest import ckptfs_bin, wait_until

MiB = 1 << 20


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Namespace:
    """A private mount namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "900"])
        own = os.readlink("/proc/self/ns/mnt")
        assert wait_until(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != own, timeout=5)
        # mount(8) records userspace options in /run/mount/utab, which the host shares: keep a private one.
        self.run("mount", "-t", "tmpfs", "tmpfs", "/run/mount", check=True)

    def run(self, *cmd, env=None, timeout=120, check=False):
        r = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", *cmd], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
        return r

    def add_links(self, directory, links):
        """Overlays `directory` (in the namespace only) with symbolic links name -> target added."""
        up, work = os.path.join(self.tmp, "up" + directory.replace("/", "-")), os.path.join(self.tmp, "work" + directory.replace("/", "-"))
        os.makedirs(up)
        os.makedirs(work)
        for name, target in links.items():
            os.symlink(target, os.path.join(up, name))
        self.run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={directory},upperdir={up},workdir={work}", directory,
                 check=True)

    def mounted(self, mp):
        return any(line.split()[4] == mp for line in self.run("cat", "/proc/self/mountinfo").stdout.splitlines())

    def write(self, path, data):
        r = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "sh", "-c", f"cat > '{path}'"], input=data,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def read(self, path):
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "cat", path], capture_output=True,
                              timeout=60, check=True).stdout

    def close(self):
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def ns(tmp_path):
    n = Namespace(str(tmp_path))
    yield n
    for line in n.run("cat", "/proc/self/mountinfo").stdout.splitlines():
        f = line.split()
        if "fuse.ckptfs" in line and f[4].startswith(str(tmp_path)):  # only its own: the namespace sees others'
            n.run("umount", "-l", f[4])
    n.close()


def daemon_args(mp):
    out = subprocess.run(["pgrep", "-a", "-f", f"ckptfs mount .* {mp} "], capture_output=True, text=True).stdout
    return out.strip()


def objects(server, bucket):
    return {o["Key"]: o for o in server.s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_an_fstab_line_mounts_through_mount_fuse3_and_umount_unmounts(server, bucket, ns, tmp_path):
    """The README's fstab line, read by mount(8) from a file (-T): mount.fuse3 runs ckptfs from the default PATH
    (an overlay on /usr/local/bin here), -o keys become options, mount(8)'s own are ignored; a file written
    lands; umount (no helper installed) detaches and the daemon drains, then exits."""
    ns.add_links("/usr/local/bin", {"ckptfs": ckptfs_bin()})
    mp, cache = str(tmp_path / "mnt"), str(tmp_path / "cache")
    os.makedirs(mp)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# ckptfs\ns3://{bucket}/run-1 {mp} fuse.ckptfs "
                     f"_netdev,nofail,defaults,x-systemd.mount-timeout=60,cache_dir={cache},upload_delay=0,log_level=notice 0 0\n")
    r = ns.run("mount", "-T", str(fstab), mp, env=server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert ns.mounted(mp)
    findmnt = ns.run("findmnt", "-n", "-o", "FSTYPE,SOURCE", mp, check=True).stdout.split()
    assert findmnt == ["fuse.ckptfs", f"s3://{bucket}/run-1"], findmnt
    args = daemon_args(mp)
    assert f"--cache-dir {cache}" in args and "--upload-delay 0" in args and "_netdev" not in args, args
    data = os.urandom(2 * MiB + 11)
    ns.write(f"{mp}/w.bin", data)
    assert sha(ns.read(f"{mp}/w.bin")) == sha(data)
    r = ns.run("umount", mp)
    assert r.returncode == 0, r.stderr
    assert not ns.mounted(mp)
    # Detached at once; the daemon uploads what is left, then exits.
    assert wait_until(lambda: not daemon_args(mp), timeout=60)
    assert sha(server.s3.get_object(Bucket=bucket, Key="run-1/w.bin")["Body"].read()) == sha(data)
    assert "unmount requested" not in open(os.path.join(cache, "ckptfs.log")).read()


def test_mount_t_fuse_ckptfs_with_the_helpers_and_umount_drains_first(server, bucket, ns, tmp_path):
    """With /sbin/mount.fuse.ckptfs and /sbin/umount.fuse.ckptfs linked to ckptfs (the README's install line),
    `mount -t fuse.ckptfs` mounts with the -o options, and `umount` runs `ckptfs unmount` (umount(8) looks for
    the helper of the type fuse.ckptfs when mount(8) recorded the mount, here for `_netdev`): when it returns, a
    file closed just before (its upload still waiting out --upload-delay) is already in S3. An unknown -o key
    fails the mount naming it; -f (fake) mounts nothing."""
    ns.add_links("/usr/sbin", {"mount.fuse.ckptfs": ckptfs_bin(), "umount.fuse.ckptfs": ckptfs_bin()})
    mp, cache = str(tmp_path / "mnt"), str(tmp_path / "cache")
    os.makedirs(mp)
    env = server.env()
    r = ns.run("mount", "-t", "fuse.ckptfs", f"s3://{bucket}", mp, "-o", "cache_dir=" + cache + ",bogus_option=1", env=env)
    assert r.returncode != 0 and "unknown mount option 'bogus_option'" in r.stderr, r.stdout + r.stderr
    assert not ns.mounted(mp)
    r = ns.run("mount", "-f", "-t", "fuse.ckptfs", f"s3://{bucket}", mp, "-o", "cache_dir=" + cache, env=env)
    assert r.returncode == 0 and not ns.mounted(mp), r.stderr

    r = ns.run("mount", "-t", "fuse.ckptfs", f"s3://{bucket}", mp, "-o",
               f"_netdev,allow_other,cache_dir={cache},upload_delay=30,file_mode=0640,log_level=notice", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ns.mounted(mp)
    args = daemon_args(mp)
    assert args.split()[1].endswith("ckptfs") and " mount " in args and "--allow-other" in args, args
    data = os.urandom(MiB + 3)
    ns.write(f"{mp}/ckpt.bin", data)
    mode = ns.run("stat", "-c", "%a", f"{mp}/ckpt.bin", check=True).stdout.strip()
    assert mode == "640", mode
    assert "ckpt.bin" not in objects(server, bucket), "the upload delay should still hold it"
    r = ns.run("umount", mp, env=env, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not ns.mounted(mp)
    # umount.fuse.ckptfs drained before detaching: the object is there the moment umount returns.
    assert sha(server.s3.get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read()) == sha(data)
    log = open(os.path.join(cache, "ckptfs.log")).read()
    assert "unmount requested (ckptfs unmount or umount): the write-back was drained first" in log, log


def test_the_daemon_tells_systemd_when_the_mount_is_live(server, bucket, mounts, tmp_path):
    """With NOTIFY_SOCKET set (a systemd Type=notify service), the foreground daemon sends READY=1 once the
    mount is live, and STOPPING=1 when a signal starts the drain."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    mp = mounts.dirs()
    env = server.env(NOTIFY_SOCKET=path)
    proc = subprocess.Popen([mounts.bin, "mount", f"s3://{bucket}", mp, "--cache-dir", str(tmp_path / "cache"),
                             "--foreground"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg, msg
        with open("/proc/self/mountinfo") as f:
            assert any(line.split()[4] == mp for line in f), "READY=1 before the mount was live"
        proc.terminate()
        msg = sock.recv(4096).decode()
        assert "STOPPING=1" in msg, msg
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", mp])
        sock.close()


def test_unmount_waits_the_mounts_own_drain_timeout(server, bucket, mounts, proxy):
    """`ckptfs unmount` (and so umount with the helper) without --drain-timeout waits as long as the mount's own
    --drain-timeout (here 2 s, uploads held at the S3 fault proxy), then unmounts and says what stays in the
    journal."""
    proxy.hold()
    mp, _ = mounts.mount_via(proxy, f"s3://{bucket}", None, None, "--drain-timeout", "2")
    r = mounts.run("status", mp, "--json")
    assert '"drainTimeoutSeconds":2' in r.stdout, r.stdout
    with open(os.path.join(mp, "held.bin"), "wb") as f:
        f.write(b"x" * 1000)
    start = time.time()
    r = mounts.run("unmount", mp)
    took = time.time() - start
    mounts.active.remove(mp)
    assert r.returncode == 0, r.stderr
    assert 2 <= took < 30, took
    assert "waited up to 2 s" in r.stderr and "held.bin" in r.stderr, r.stderr
