"""rclone mount (Debian `rclone`) with --vfs-cache-mode full, 16 MiB chunks, 8 transfers, upload right after
close."""
import os
import subprocess

from ..common import OUT, is_mounted, sh, wait_until
from . import Mount


class Rclone(Mount):
    name = "rclone"
    order = 60
    summary = "rclone mount (--vfs-cache-mode full, 16 MiB chunks, 8 transfers)"
    tool = apt_package = "rclone"
    version_command = ["rclone", "version"]
    color = "#2ca02c"

    def env(self):
        e = dict(os.environ, RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                 RCLONE_CONFIG_BENCH_ENDPOINT=self.s3.endpoint, RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.s3.access,
                 RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.s3.secret, RCLONE_CONFIG_BENCH_REGION="us-east-1",
                 RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        e.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 refuses to start with it set
        return e

    def mount(self):
        r = subprocess.run(["rclone", "mount", f"bench:{self.s3.bucket}", self.mp, "--daemon", "--vfs-cache-mode", "full",
                "--cache-dir", self.cache, "--vfs-read-chunk-size", "16M", "--buffer-size", "32M", "--transfers", "8",
                "--s3-upload-concurrency", "8", "--s3-chunk-size", "16M", "--vfs-write-back", "0s",
                "--dir-cache-time", "30s", "--vfs-cache-max-size", "8G", "--log-file", os.path.join(OUT, "rclone.log")],
               env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the daemon keeps pipes open
        if r.returncode != 0 or not wait_until(lambda: is_mounted(self.mp), 20):
            raise SystemExit(f"bench: rclone mount failed, see {os.path.join(OUT, 'rclone.log')}")
        self.mounted = True

    def durable(self, keys):
        # rclone uploads in the background after close: poll the server until every object is there.
        want = dict(keys)
        c = self.s3.make_client()

        def done():
            for k, size in list(want.items()):
                try:
                    if c.head_object(Bucket=self.s3.bucket, Key=k)["ContentLength"] == size:
                        del want[k]
                except Exception:
                    return False
            return not want
        if not wait_until(done, 900, 0.2):
            raise SystemExit(f"bench: rclone did not upload {len(want)} files")

    def pid(self):
        out = sh(["pgrep", "-f", f"rclone mount bench:{self.s3.bucket} {self.mp}"], check=False).stdout.split()
        return int(out[0]) if out else None
