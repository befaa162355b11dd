"""Systems: what a workload runs against. One module per system in this package; registry.py finds them.

A system is a class with a `name` (what --systems takes) deriving from one of two kinds:

- `Mount`: a FUSE mount of the bucket (ckptfs, s3fs, rclone). Every workload measures a mount the same way,
  through POSIX calls on its mount point, so a new mounting system is one new module: say how to mount it
  (`mount`), how to know its writes are in S3 (`durable`) and, optionally, which process serves it (`pid`).
- `Direct`: not a mount (direct S3 clients, the local disk). What such a system does for a workload differs
  from tool to tool, so each workload module holds one method per direct system it measures (marked with
  `@direct("name")`, see workloads/__init__.py); a workload without one for a system skips it.
"""
import os
import shutil
import subprocess

from ..common import OUT, command_version, is_mounted, wait_until


class System:
    """One system under comparison. Class attributes describe it; an instance is made per run with the S3
    server (`ckptbench.server.S3`) it talks to."""
    name = ""               # as given to --systems; also the column in the tables
    order = 100             # place in the default --systems list, hence in the tables
    kind = ""               # "mount" or "direct"
    summary = ""            # one line for `bench/run --help`
    tool = None             # executable without which the system is skipped with a note
    apt_package = None      # Debian package bench/run installs (as root) when `tool` is missing
    version_command = None  # argv whose first line of output goes in the JSON's "versions"
    color = "#999"          # bar colour in the charts
    measured = False        # True: its daemon's CPU seconds and peak RSS are recorded per workload

    def __init__(self, s3):
        self.s3 = s3

    @classmethod
    def available(cls):
        return cls.tool is None or shutil.which(cls.tool) is not None

    @classmethod
    def install(cls):
        """Installs what the system needs beyond an apt package (called as root when `available()` is
        false); the default does nothing."""

    @classmethod
    def version(cls):
        """The version string recorded in the results, or None."""
        return command_version(cls.version_command) if cls.version_command else None


class Mount(System):
    """A mounting system: mounted on bench/out/mnt-NAME with its cache in bench/out/cache-NAME. Subclasses say
    how to mount, how to wait for durability and which process to measure."""
    kind = "mount"

    def __init__(self, s3):
        super().__init__(s3)
        self.mp = os.path.join(OUT, "mnt-" + self.name)
        self.cache = os.path.join(OUT, "cache-" + self.name)
        self.mounted = False

    def mount(self, *extra):
        """Mounts the bucket on `mp` with its cache in `cache`; `extra` are further mount options (ckptfs only).
        Raises SystemExit if the mount fails."""
        raise NotImplementedError

    def fresh(self):
        """Unmounted, with an empty cache."""
        self.unmount()
        shutil.rmtree(self.cache, ignore_errors=True)
        os.makedirs(self.cache, exist_ok=True)
        os.makedirs(self.mp, exist_ok=True)

    def unmount(self):
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-u", self.mp], capture_output=True)
            if not wait_until(lambda: not is_mounted(self.mp), 30):
                subprocess.run(["fusermount3", "-u", "-z", self.mp], capture_output=True)
        self.mounted = False

    def durable(self, keys):
        """Blocks until every key is in S3 (for mounts that upload in the background). `keys` are
        (key, size in bytes) pairs."""

    def pid(self):
        """The process serving the mount, or None."""
        return None


class Direct(System):
    """A system that is not a mount: each workload says what it does for it (see the module docstring)."""
    kind = "direct"
