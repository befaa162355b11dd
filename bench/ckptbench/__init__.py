"""ckptbench: the benchmark suite behind `bench/run`, and what the standalone scripts in bench/ share.

    common.py      paths (bench/out, bench/results), units, processes, files, checks, the release binary
    server.py      the S3 side: the server (local SeaweedFS or given), the latency proxy
    systems/       one module per system (ckptfs, local, s5cmd, boto3, s3fs, rclone, s3torch): how to mount it, how
                   to tell when its writes are durable, which process to measure
    workloads/     one module per workload (read, save, small, ..., torch-save, torch-load, dcp): its data, what it
                   measures through a mount, and what each direct-S3 system does instead
    registry.py    finds every system and workload module above; adding one is adding a file
    runner.py      one run: the server, the systems, each workload against each system, the latency pass
    report.py      ratios, the Markdown tables, the charts and the JSON under bench/results
    cli.py         `bench/run`'s options and main()

Nothing here is imported by ckptfs or its tests; `bench/run`, `bench/read_rounds.py` and `bench/listing.py`
put bench/ on sys.path and import it.
"""
