"""s3fs-fuse (Debian `s3fs`) with the options that suit this: path-style, no compat dirs, negative cache, disk
cache, parallel multipart."""
import os

from ..common import OUT, is_mounted, sh, wait_until
from . import Mount


class S3fs(Mount):
    name = "s3fs"
    order = 50
    summary = "s3fs mount (use_cache, parallel_count=8, multipart_size=16)"
    tool = apt_package = "s3fs"
    version_command = ["s3fs", "--version"]
    color = "#ff7f0e"

    def mount(self):
        pw = os.path.join(OUT, "s3fs.passwd")
        with open(pw, "w") as f:
            f.write(f"{self.s3.access}:{self.s3.secret}\n")
        os.chmod(pw, 0o600)
        opts = ",".join([f"url={self.s3.endpoint}", "use_path_request_style", "notsup_compat_dir", "enable_noobj_cache",
                         f"passwd_file={pw}", f"use_cache={self.cache}", "parallel_count=8", "multipart_size=16",
                         "max_stat_cache_size=100000", "stat_cache_expire=30", "endpoint=us-east-1"])
        r = sh(["s3fs", self.s3.bucket, self.mp, "-o", opts], check=False)
        if r.returncode != 0 or not wait_until(lambda: is_mounted(self.mp), 20):
            raise SystemExit(f"bench: s3fs mount failed: {r.stderr}")
        self.mounted = True

    def pid(self):
        out = sh(["pgrep", "-f", f"s3fs {self.s3.bucket} {self.mp}"], check=False).stdout.split()
        return int(out[0]) if out else None
