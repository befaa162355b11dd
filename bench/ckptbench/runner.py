"""One run of the suite: the server, the systems, every chosen workload against every chosen system, then
the latency pass, then the report.

`Run` is what workloads see: the server (`s3`), the current pass (`latency`, in ms), the shared data
(`shard`), `record` for figures, `start_measure`/`end_measure` for the ckptfs daemon's CPU seconds and peak
RSS, `each` to run a function against every system, and `notes` for what the report should say.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import time

from . import registry, report
from .common import OUT, RESULTS, ROOT, Check, log
from .data import Shard
from .server import S3, Proxy


class Run:
    def __init__(self, args, s3, systems):
        self.args, self.s3, self.systems = args, s3, systems
        self.quick = args.quick
        self.rows = []  # {workload, figure, unit, better, system, value, latency_ms}
        self.daemon = {}  # "WORKLOAD@LATms" -> {cpu_s, peak_rss_bytes}
        self.latency = 0
        self.notes = []
        self.shard = Shard(self.quick)

    def record(self, workload, figure, unit, better, system, value, rounds=None):
        """One figure of one system in the current pass. `better`: "higher" or "lower". `rounds`: the value
        of each round when `value` is their median (kept in the JSON)."""
        row = dict(workload=workload, figure=figure, unit=unit, better=better, system=system, value=value,
                   latency_ms=self.latency)
        if rounds is not None:
            row["rounds"] = rounds
        self.rows.append(row)
        log(f"  {system:7s} {figure}: {value:.3f} {unit}" +
            (f" (rounds: {', '.join(f'{v:.3f}' for v in rounds)})" if rounds is not None else ""))

    # -- measuring the ckptfs daemon

    def start_measure(self, m):
        """For a measured system's daemon: resets its peak RSS and returns a token for `end_measure` (None for
        any other system)."""
        pid = m.pid() if m.measured else None
        if not pid:
            return None
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5\n")  # resets the peak RSS
        except OSError:
            pass
        return pid, self.cpu(pid)

    @staticmethod
    def cpu(pid):
        """User + system CPU seconds of a process."""
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def end_measure(self, token, workload):
        """Adds the CPU seconds since `start_measure` to WORKLOAD@LATms and keeps the highest peak RSS."""
        if not token:
            return
        pid, cpu0 = token
        try:
            cpu = self.cpu(pid) - cpu0
            with open(f"/proc/{pid}/status") as f:
                hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
        except OSError:
            return
        d = self.daemon.setdefault(f"{workload}@{self.latency}ms", {"cpu_s": 0.0, "peak_rss_bytes": 0})
        d["cpu_s"] += cpu
        d["peak_rss_bytes"] = max(d["peak_rss_bytes"], hwm)

    # -- data and systems

    def prepare(self, workloads):
        """Uploads the data the chosen workloads read (only that: a save-only run starts at once)."""
        log("preparing data")
        os.makedirs(OUT, exist_ok=True)
        if any(w.uses_shard for w in workloads):
            self.shard.prepare(self.s3)
        for w in workloads:
            w.prepare()

    def cleanup_prepared(self, workloads=()):
        """Removes the local data of the run (the shard) and of each workload in `workloads`."""
        self.shard.cleanup()
        for w in workloads:
            w.cleanup()

    def each(self, workload, fn, systems=None):
        """Calls fn(system) for every system (or those of `systems`, in that order); a mount is fresh before and
        unmounted after. A system that fails (other than a wrong byte) is noted and the run goes on."""
        for sysm in self.systems if systems is None else systems:
            if sysm.kind == "mount":
                sysm.fresh()
            try:
                fn(sysm)
            except (Check, KeyboardInterrupt):
                raise
            except Exception as e:  # a peer that breaks is reported, and the run goes on
                note = f"{workload} ({'latency' if self.latency else 'loopback'}): {sysm.name} failed: {e}"
                log("  " + note)
                self.notes.append(note)
            finally:
                if sysm.kind == "mount":
                    sysm.unmount()


def install_missing(wanted):
    """As root with apt-get: installs the chosen systems' missing tools (s3fs, rclone) and every workload's
    (fio), each chosen system's own `install()` (s3torch: pip), and matplotlib with pip for the charts.
    Otherwise does nothing."""
    if os.geteuid() != 0:
        return
    systems = registry.systems()
    for name, cls in systems.items():
        if name in wanted and not cls.available():
            cls.install()
    if not shutil.which("apt-get"):
        return
    pkgs = [cls.apt_package for name, cls in systems.items()
            if name in wanted and cls.tool and cls.apt_package and not shutil.which(cls.tool)]
    for cls in registry.workloads().values():
        pkgs += [t for t in cls.apt_tools if not shutil.which(t) and t not in pkgs]
    if pkgs:
        log("bench: installing " + " ".join(pkgs))
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if importlib.util.find_spec("matplotlib") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True)


def run(args, command):
    """The whole suite for parsed `bench/run` options (names already checked); exits 1 on a wrong byte."""
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    wanted = args.systems.split(",")
    if not args.no_install:
        install_missing(wanted)
    if not args.no_build:
        subprocess.run(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", "ckptfs"], check=True)

    s3 = S3(args)
    notes = []
    systems = []
    known = registry.systems()
    for name in wanted:
        cls = known[name]
        if cls.available():
            systems.append(cls(s3))
        else:
            notes.append(f"{name}: not installed, skipped (apt-get install {cls.apt_package or cls.tool})")
    the_run = Run(args, s3, systems)
    the_run.notes = notes
    all_workloads = {name: cls(the_run) for name, cls in registry.workloads().items()}
    plan = [all_workloads[name] for name in args.workloads.split(",")]
    proxy = None
    started = time.time()
    load_start = os.getloadavg()
    try:
        the_run.prepare(plan)
        for wl in plan:
            wl.execute()
        if not args.no_latency and args.latency_ms > 0:
            proxy = Proxy(s3, args.latency_ms)
            s3.endpoint = proxy.endpoint
            the_run.latency = args.latency_ms
            for wl in plan:
                if wl.latency:
                    wl.execute()
    except Check as e:
        log(f"bench: {e}")
        sys.exit(1)
    finally:
        for m in systems:
            if m.kind == "mount":
                m.unmount()
        if proxy:
            proxy.stop()
        the_run.cleanup_prepared(plan)
        s3.stop()

    load_end = os.getloadavg()
    the_run.notes.append("load average (1, 5, 15 min) at the start {:.2f} {:.2f} {:.2f}, at the end "
                         "{:.2f} {:.2f} {:.2f}".format(*load_start, *load_end))
    sizes = {"read_bytes": the_run.shard.size}
    for wl in all_workloads.values():
        sizes.update(wl.sizes())
    report.report(args.output, command, the_run.rows, [s.name for s in systems], the_run.daemon, the_run.notes,
                  [0] + ([args.latency_ms] if not args.no_latency and args.latency_ms > 0 else []),
                  {"machine": report.machine(), "versions": report.versions(),
                   "endpoint": "local SeaweedFS" if not args.endpoint_url else "given", "sizes": sizes},
                  (time.time() - started) / 60)
