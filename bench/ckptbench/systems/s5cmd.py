"""s5cmd with its defaults: direct S3 (what it does per workload is in each workload's module)."""
from . import Direct


class S5cmd(Direct):
    name = "s5cmd"
    order = 30
    summary = "direct S3 with s5cmd (defaults)"
    version_command = ["s5cmd", "version"]
    color = "#7f7f7f"
