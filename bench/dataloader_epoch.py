#!/usr/bin/env python3
"""One pass of a PyTorch DataLoader (4 worker processes) over a dataset of files, the way a training job's first
epoch reads it, for the `dataloader` workload of bench/run. Needs torch (and s3torchconnector for `s3`); run
with a Python that has them (bench/run takes it from BENCH_TORCH_PYTHON).

    dataloader_epoch.py mount DIR              # a map-style dataset over os.listdir(DIR), read with open()
    dataloader_epoch.py s3 s3://BUCKET/PREFIX  # s3torchconnector's S3MapDataset.from_prefix, the same objects

For `s3` the endpoint, credentials and region come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_REGION (path-style addressing). Prints one JSON line: seconds (the pass, from
building the dataset, which lists, to the last batch), files, bytes, and {name: sha256} of every file."""
import hashlib
import json
import os
import sys
import time

import torch.utils.data as tud

WORKERS = 4
BATCH = 32


class Files(tud.Dataset):
    """Files of one directory, listed once (ImageFolder, glob), each read whole by a worker."""

    def __init__(self, directory):
        self.directory = directory
        self.names = sorted(os.listdir(directory))

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        with open(os.path.join(self.directory, self.names[i]), "rb") as f:
            data = f.read()
        return self.names[i], len(data), hashlib.sha256(data).hexdigest()


def from_s3_reader(reader):
    data = reader.read()
    return reader.key.rsplit("/", 1)[-1], len(data), hashlib.sha256(data).hexdigest()


def as_list(batch):
    return batch


def main():
    mode, where = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    if mode == "mount":
        ds = Files(where)
    else:
        from s3torchconnector import S3MapDataset, S3ClientConfig
        ds = S3MapDataset.from_prefix(where, region=os.environ.get("AWS_REGION", "us-east-1"),
                                      endpoint=os.environ["AWS_ENDPOINT_URL"],
                                      s3client_config=S3ClientConfig(force_path_style=True),
                                      transform=from_s3_reader)
    loader = tud.DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=as_list)
    digests, total = {}, 0
    for batch in loader:
        for name, n, digest in batch:
            digests[name] = digest
            total += n
    print(json.dumps({"seconds": time.perf_counter() - t0, "files": len(digests), "bytes": total, "sha": digests}))


if __name__ == "__main__":
    main()
