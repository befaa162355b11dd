"""What the standalone benchmark scripts (read_rounds.py, listing.py) share: the release binary, a local
SeaweedFS for the run, and dropping the kernel's caches. (bench/run, the suite, has its own fuller harness.)"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def require_tools(tool):
    """The release build of ckptfs and s5cmd, or a clear exit naming what to do."""
    binary = os.path.join(ROOT, ".build", "release", "ckptfs")
    if not os.path.exists(binary):
        raise SystemExit(f"{tool}: build first: swift build -c release")
    if shutil.which("s5cmd") is None:
        raise SystemExit(f"{tool}: s5cmd not found (bench/run installs it)")
    return binary


def start_seaweed(out, bucket, tool):
    """Starts SeaweedFS under OUT/seaweed with BUCKET; returns (server info, environment for AWS clients)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "start", "--dir",
                        os.path.join(out, "seaweed"), "--bucket", bucket, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{tool}: could not start SeaweedFS: {r.stderr}")
    info = json.loads(r.stdout)
    env = dict(os.environ, AWS_ENDPOINT_URL=info["endpoint"], AWS_ACCESS_KEY_ID=info["access_key"],
               AWS_SECRET_ACCESS_KEY=info["secret_key"], AWS_REGION="us-east-1")
    return info, env


def stop_seaweed(out):
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seaweed.py"), "stop", "--dir",
                    os.path.join(out, "seaweed")], capture_output=True)


def save_results(name, res, lines):
    """Writes bench/results/NAME.json (`res`, which holds `command` and `date`) and NAME.md: a line naming the
    command, then `lines`. Returns the Markdown lines."""
    out = [f"Command: `{res['command']}` ({res['date']}, {os.cpu_count()} cores, server on the same machine).", ""]
    out += lines
    results = os.path.join(ROOT, "bench", "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(results, name + ".md"), "w") as f:
        f.write("\n".join(out) + "\n")
    return out
