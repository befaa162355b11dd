"""`bench/run`: its options, its help text (workloads and systems listed from the registry) and main()."""
import argparse
import sys
import textwrap

from . import registry, report, runner

DESCRIPTION = """\
The benchmark suite: ckptfs against direct S3 access and against peer mounts, same server, same run.

    bench/run [--quick] [--workloads {workloads}] [--systems {systems}]
              [--latency-ms 10] [--no-latency] [--endpoint-url URL --bucket NAME] [--no-install] [--no-build]

Starts a local SeaweedFS on loopback (unless --endpoint-url is given, with credentials from the usual AWS
variables), generates the data, runs every workload against every system, checks what was read or written
by sha256 (a mismatch aborts the run), and writes:
  bench/results/suite.json   every figure, ratios, ckptfs daemon CPU seconds and peak RSS per workload,
                             machine facts and versions
  bench/results/suite.md     the tables
  bench/results/suite.png    bar charts (suite-latency.png for the latency mode)
Workloads (bench/ckptbench/workloads/):
{workload_lines}
Systems (bench/ckptbench/systems/):
{system_lines}
A missing peer is installed when running as root (unless --no-install; apt, or pip into BENCH_TORCH_PYTHON for
s3torch) or skipped with a note; never faked. torch-save, torch-load and dcp run in BENCH_TORCH_PYTHON (torch,
and s3torchconnector[dcp] for s3torch), 3 rounds with the systems' order rotating; their figures are medians.
Latency mode (default on, --latency-ms 10): a delaying TCP proxy between every client and the server
(10 ms each way = 20 ms RTT, like S3 in-region); workloads {latency_workloads} run again through it.
Ratios are speed ratios: above 1 means ckptfs is faster. "cold" means the whole stack: the kernel's caches
are dropped, which empties the server's page cache too.
"""


def _lines(found):
    width = max(len(n) for n in found)
    out = []
    for name, cls in found.items():
        out += textwrap.wrap(cls.summary, 110, initial_indent=f"  {name:{width}s}  ",
                             subsequent_indent=" " * (width + 4))
    return "\n".join(out)


def parser():
    systems, workloads = registry.systems(), registry.workloads()
    description = DESCRIPTION.format(
        workloads=",".join(workloads), systems=",".join(systems), workload_lines=_lines(workloads),
        system_lines=_lines(systems), latency_workloads=", ".join(n for n, c in workloads.items() if c.latency))
    ap = argparse.ArgumentParser(prog="bench/run", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (256 MiB read, 512 MiB save and torch-save/-load, "
                    "4 x 64 MiB dcp, 200 files)")
    ap.add_argument("--workloads", default=",".join(workloads))
    ap.add_argument("--systems", default=",".join(systems))
    ap.add_argument("--latency-ms", type=float, default=10)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--endpoint-url")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--output", default="suite", help="name of the result files under bench/results")
    ap.add_argument("--report", metavar="JSON", help="only rebuild the tables and plots from a results file")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.report:
        return report.rereport(args.report)
    for option, known in (("--workloads", registry.workloads()), ("--systems", registry.systems())):
        unknown = [n for n in getattr(args, option[2:]).split(",") if n not in known]
        if unknown:
            ap.error(f"{option}: unknown {', '.join(unknown)} (known: {','.join(known)})")
    argv = sys.argv[1:] if argv is None else argv
    runner.run(args, "bench/run " + " ".join(argv))
