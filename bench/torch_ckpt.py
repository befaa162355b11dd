#!/usr/bin/env python3
"""One checkpoint operation of PyTorch, timed, for the torch-save, torch-load and dcp workloads of bench/run.
Needs torch (and s3torchconnector[dcp] for the `s3torch` system); bench/run runs it with BENCH_TORCH_PYTHON.

    torch_ckpt.py ref PATH SIZE_MIB                        # the reference checkpoint, saved to a local file
    torch_ckpt.py save SYSTEM DEST SIZE_MIB [--fsync] [--daemon-pid PID] [--staging PATH]
    torch_ckpt.py load SYSTEM SRC SIZE_MIB [--daemon-pid PID]
    torch_ckpt.py dcp-save SYSTEM DEST RANKS MIB_PER_RANK [--flush MOUNTPOINT --ckptfs BIN] [--daemon-pid PID]
    torch_ckpt.py dcp-load SYSTEM SRC RANKS MIB_PER_RANK [--daemon-pid PID]

SYSTEM is `file` (DEST/SRC a path: a ckptfs mount or the local disk), `s3torch` (an s3://BUCKET/KEY URI: the
S3 Connector for PyTorch's S3Checkpoint writer/reader, S3StorageWriter/S3StorageReader for DCP) or, for
`save` only, `s5cmd` (torch.save to the local file --staging, then `s5cmd cp` of it to the URI). s3torch and
s5cmd take the endpoint, credentials and region from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_REGION (path-style addressing); nothing else is contacted.

The state dict is float32 tensors of 64 MiB (DCP: 32 MiB, keys rank{R}.layer{I}), seeded, so every process
makes the same one; it is made before the clock starts. Prints one JSON line:
  seconds            the operation (save: until durable for s3torch, s5cmd, file with --fsync; until close()
                     returned for file without it; load: torch.load/dcp.load until it returned)
  written_seconds    save to a file: until torch.save returned (the bytes in the page cache)
  saved_seconds      dcp-save: until dcp.save returned on every rank (before `ckptfs flush`)
  cpu                CPU seconds of this process over `seconds` (all its threads, the CRT client's included),
                     plus its children's (s5cmd) and, for dcp-save, every rank's
  daemon_cpu         the CPU seconds of --daemon-pid over the same interval (0 without it);
                     daemon_cpu_written: until torch.save returned
  bytes              the tensors' bytes
  digest             sha256 over the tensors' bytes in key order (ref, load: what was loaded)
  equal              dcp-load: every loaded tensor equals the one saved (torch.equal)
"""
import argparse
import hashlib
import json
import os
import resource
import socket
import subprocess
import time

import torch

MiB = 1 << 20


def cpu_self(children=False):
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = r.ru_utime + r.ru_stime
    if children:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        c += r.ru_utime + r.ru_stime
    return c


def cpu_pid(pid):
    """User + system CPU seconds of process `pid` (all its threads), from /proc/PID/stat; 0 without a pid."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def state_dict(size_mib):
    """float32 tensors of 64 MiB (size_mib // 64 of them, at least one), seeded."""
    g = torch.Generator().manual_seed(19)
    return {f"layer{i}.weight": torch.randn(16 * MiB, generator=g) for i in range(max(1, size_mib // 64))}


def rank_state_dict(rank, mib_per_rank):
    """DCP: rank `rank`'s share, float32 tensors of up to 32 MiB, seeded by rank."""
    g = torch.Generator().manual_seed(1900 + rank)
    per = min(32, mib_per_rank)
    return {f"rank{rank}.layer{i}": torch.randn(per * MiB // 4, generator=g) for i in range(max(1, mib_per_rank // per))}


def digest(sd):
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(sd[k].contiguous().numpy().data)
    return h.hexdigest()


def nbytes(sd):
    return sum(t.numel() * t.element_size() for t in sd.values())


def s3_client_config():
    from s3torchconnector import S3ClientConfig
    return S3ClientConfig(force_path_style=True)


def region():
    return os.environ.get("AWS_REGION", "us-east-1")


def checkpoint():
    from s3torchconnector import S3Checkpoint
    return S3Checkpoint(region=region(), endpoint=os.environ["AWS_ENDPOINT_URL"], s3client_config=s3_client_config())


def point_at_endpoint(storage):
    """S3StorageWriter/S3StorageReader take no endpoint: give their file system a client made with one (the
    same client they make, plus `endpoint`), so that they talk to AWS_ENDPOINT_URL and nothing else."""
    from s3torchconnector._s3client import S3Client
    from s3torchconnector._user_agent import UserAgent
    storage.fs._client = S3Client(region=region(), endpoint=os.environ["AWS_ENDPOINT_URL"],
                                  user_agent=UserAgent(["dcp", torch.__version__]), s3client_config=s3_client_config())
    return storage


def ref(a):
    sd = state_dict(a.size_mib)
    with open(a.where, "wb") as f:
        torch.save(sd, f)
        f.flush()
        os.fsync(f.fileno())
    return dict(bytes=nbytes(sd), digest=digest(sd))


def save(a):
    sd = state_dict(a.size_mib)
    out = dict(bytes=nbytes(sd))
    ckpt = checkpoint() if a.system == "s3torch" else None
    c0, d0, t0 = cpu_self(children=True), cpu_pid(a.daemon_pid), time.perf_counter()
    if a.system == "s3torch":
        with ckpt.writer(a.where) as w:
            torch.save(sd, w)
    elif a.system == "s5cmd":
        with open(a.staging, "wb") as f:
            torch.save(sd, f)
        out["written_seconds"] = time.perf_counter() - t0
        subprocess.run(["s5cmd", "--endpoint-url", os.environ["AWS_ENDPOINT_URL"], "cp", a.staging, a.where],
                       check=True, capture_output=True)
    else:
        with open(a.where, "wb") as f:
            torch.save(sd, f)
            f.flush()
            out["written_seconds"] = time.perf_counter() - t0
            out["daemon_cpu_written"] = cpu_pid(a.daemon_pid) - d0
            if a.fsync:
                os.fsync(f.fileno())
    out["seconds"] = time.perf_counter() - t0
    out.update(cpu=cpu_self(children=True) - c0, daemon_cpu=cpu_pid(a.daemon_pid) - d0)
    return out


def load(a):
    ckpt = checkpoint() if a.system == "s3torch" else None
    c0, d0, t0 = cpu_self(), cpu_pid(a.daemon_pid), time.perf_counter()
    if a.system == "s3torch":
        with ckpt.reader(a.where) as r:
            sd = torch.load(r, map_location="cpu", weights_only=True)
    else:
        sd = torch.load(a.where, map_location="cpu", weights_only=True)
    dt = time.perf_counter() - t0
    return dict(seconds=dt, cpu=cpu_self() - c0, daemon_cpu=cpu_pid(a.daemon_pid) - d0, bytes=nbytes(sd),
                digest=digest(sd))


def dcp_rank(rank, a, port, results):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.ranks)
    sd = rank_state_dict(rank, a.mib_per_rank)
    if a.system == "s3torch":
        from s3torchconnector.dcp import S3StorageWriter
        writer = point_at_endpoint(S3StorageWriter(region=region(), path=a.where, s3client_config=s3_client_config()))
    else:
        writer = dcp.FileSystemWriter(a.where)  # sync_files=True: every file fsynced (durable on ckptfs)
    dist.barrier()
    c0, d0, t0 = cpu_self(children=True), cpu_pid(a.daemon_pid), time.perf_counter()
    dcp.save(sd, storage_writer=writer)
    dist.barrier()
    saved = time.perf_counter() - t0
    if rank == 0 and a.flush:
        subprocess.run([a.ckptfs, "flush", a.flush, "--timeout", "600"], check=True, capture_output=True)
    dist.barrier()
    dt = time.perf_counter() - t0
    cpu = torch.tensor([cpu_self(children=True) - c0], dtype=torch.float64)
    dist.all_reduce(cpu)
    if rank == 0:
        results.put(dict(seconds=dt, saved_seconds=saved, cpu=cpu.item(), daemon_cpu=cpu_pid(a.daemon_pid) - d0,
                         bytes=nbytes(sd) * a.ranks))
    dist.destroy_process_group()


def dcp_save(a):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.spawn(dcp_rank, args=(a, port, results), nprocs=a.ranks, join=True)
    return results.get()


def dcp_load(a):
    import torch.distributed.checkpoint as dcp
    torch.set_num_threads(1)
    sd = {}
    for r in range(a.ranks):
        sd.update({k: torch.empty_like(v) for k, v in rank_state_dict(r, a.mib_per_rank).items()})
    if a.system == "s3torch":
        from s3torchconnector.dcp import S3StorageReader
        reader = point_at_endpoint(S3StorageReader(region=region(), path=a.where, s3client_config=s3_client_config()))
    else:
        reader = dcp.FileSystemReader(a.where)
    c0, d0, t0 = cpu_self(), cpu_pid(a.daemon_pid), time.perf_counter()
    dcp.load(sd, storage_reader=reader)
    dt = time.perf_counter() - t0
    out = dict(seconds=dt, cpu=cpu_self() - c0, daemon_cpu=cpu_pid(a.daemon_pid) - d0, bytes=nbytes(sd))
    equal = True
    for r in range(a.ranks):
        for k, v in rank_state_dict(r, a.mib_per_rank).items():
            equal = equal and torch.equal(sd[k], v)
    out["equal"] = equal
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=["ref", "save", "load", "dcp-save", "dcp-load"])
    ap.add_argument("rest", nargs="+")
    ap.add_argument("--fsync", action="store_true")
    ap.add_argument("--daemon-pid", type=int)
    ap.add_argument("--staging")
    ap.add_argument("--flush")
    ap.add_argument("--ckptfs")
    a = ap.parse_args()
    if a.op == "ref":
        a.where, a.size_mib = a.rest[0], int(a.rest[1])
        out = ref(a)
    elif a.op in ("save", "load"):
        a.system, a.where, a.size_mib = a.rest[0], a.rest[1], int(a.rest[2])
        out = save(a) if a.op == "save" else load(a)
    else:
        a.system, a.where, a.ranks, a.mib_per_rank = a.rest[0], a.rest[1], int(a.rest[2]), int(a.rest[3])
        out = dcp_save(a) if a.op == "dcp-save" else dcp_load(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
