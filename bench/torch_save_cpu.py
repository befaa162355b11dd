#!/usr/bin/env python3
"""CPU seconds per GiB of a torch.save until the checkpoint is durable in S3: the S3 Connector for PyTorch
against a ckptfs mount. Run with a Python that has torch and s3torchconnector:

    torch_save_cpu.py s3 s3://BUCKET/KEY SIZE_MIB          # S3Checkpoint writer; close() completes the upload
    torch_save_cpu.py mount /MOUNT/PATH SIZE_MIB DAEMON_PID  # torch.save to the file, then fsync (--fsync durable)

Prints one JSON line: seconds, the process's CPU (all its threads: the CRT client runs in the process) and,
for a mount, the daemon's CPU over the same interval; all per GiB too. The state dict (float32 tensors of
64 MiB) is made before the clock starts.
"""
import json
import os
import resource
import sys
import time

import torch

GiB = 1 << 30


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_pid(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def main():
    mode, where, size_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n = max(1, size_mib // 64)
    sd = {f"layer{i}.weight": torch.randn(16 << 20) for i in range(n)}  # 64 MiB each
    size = n * (64 << 20)
    pid = int(sys.argv[4]) if mode == "mount" else None
    if mode == "s3":
        from s3torchconnector import S3Checkpoint, S3ClientConfig
        ckpt = S3Checkpoint(region=os.environ.get("AWS_REGION", "us-east-1"), endpoint=os.environ["AWS_ENDPOINT_URL"],
                            s3client_config=S3ClientConfig(force_path_style=True))
    c0, d0, t0 = cpu_self(), cpu_pid(pid) if pid else 0.0, time.perf_counter()
    if mode == "s3":
        with ckpt.writer(where) as w:
            torch.save(sd, w)
    else:
        with open(where, "wb") as f:
            torch.save(sd, f)
            f.flush()
            os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    c1, d1 = cpu_self(), cpu_pid(pid) if pid else 0.0
    out = dict(mode=mode, bytes=size, seconds=dt, process_cpu=c1 - c0, process_cpu_per_gib=(c1 - c0) * GiB / size)
    if pid:
        out.update(daemon_cpu=d1 - d0, daemon_cpu_per_gib=(d1 - d0) * GiB / size,
                   total_cpu_per_gib=(c1 - c0 + d1 - d0) * GiB / size)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
