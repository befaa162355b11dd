"""ckptfs, the system under test: the release build, mounted with defaults (an 8 GiB cache)."""
from ..common import CKPTFS_BIN, is_mounted, sh
from . import Mount


class Ckptfs(Mount):
    name = "ckptfs"
    order = 10
    summary = "ckptfs (release build, defaults)"
    version_command = [CKPTFS_BIN, "--version"]
    color = "#1f77b4"
    measured = True

    def __init__(self, s3):
        super().__init__(s3)
        self.bin = CKPTFS_BIN

    def mount(self, *extra):
        r = sh([self.bin, "mount", f"s3://{self.s3.bucket}", self.mp, "--cache-dir", self.cache, "--cache-size", "8GiB",
                *extra], env=self.s3.env(), check=False)
        if r.returncode != 0:
            raise SystemExit(f"bench: ckptfs mount failed: {r.stderr}")
        self.mounted = True

    def unmount(self):
        if is_mounted(self.mp):
            sh([self.bin, "unmount", self.mp], check=False, timeout=300)
        super().unmount()

    def durable(self, keys):
        r = sh([self.bin, "flush", self.mp, "--timeout", "600"], check=False, timeout=700)
        if r.returncode != 0:
            raise SystemExit(f"bench: ckptfs flush failed: {r.stderr}")

    def pid(self):
        # The newest: with a build whose `unmount` returned before its daemon exited (before b895994), the
        # daemon of the mount before could still be running, and a CPU figure read from it failed once it
        # was gone (a torch-save round did).
        out = sh(["pgrep", "-n", "-f", f"ckptfs mount .* {self.mp} "], check=False).stdout.split()
        return int(out[0]) if out else None
