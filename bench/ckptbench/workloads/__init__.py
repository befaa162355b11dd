"""Workloads: what is measured. One module per workload in this package; registry.py finds them.

A workload is a class deriving from `Workload` with a `name` (what --workloads takes). The runner makes one
instance per run, calls `prepare()` once before any workload runs (upload what it reads), then `execute()`
for the loopback pass and, if `latency` is set, again in the latency pass. `execute()` runs `one(system)`
for each chosen system, on a fresh unmounted mount with an empty cache for mounting systems (the runner's
`each`), and a failure of one system is noted and the run goes on; a wrong byte (`expect`) aborts the run.

`one(m)` calls `through_mount(m)` for a mounting system and, for a direct system (an S3 client, the local
disk), the method marked `@direct(m.name)`; a direct system without one is not measured by this workload.
Figures are recorded with `self.record(figure, unit, better, system name, value)`: `better` is "higher"
(a speed) or "lower" (a time), which is how the ratios are turned so that above 1 means ckptfs is faster.
"""
from ..common import log


def direct(system):
    """Marks a workload method as what the direct system named `system` does for this workload."""
    def mark(fn):
        fn.direct_system = system
        return fn
    return mark


class Workload:
    name = ""             # as given to --workloads; the first column of the tables
    order = 100           # place in the default --workloads list, hence the order runs and tables follow
    summary = ""          # one line for `bench/run --help`
    latency = False       # True: run again through the latency proxy
    uses_shard = False    # True: reads the shared 1 GiB object (ckptbench.data.Shard)
    apt_tools = ()        # executables (and Debian packages of that name) bench/run installs, as root, if missing
    version_commands = {}  # name -> argv, for the JSON's "versions"
    direct_handlers = {}  # system name -> method name, filled from the @direct marks

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        handlers = dict(cls.direct_handlers)
        for attr, fn in vars(cls).items():
            if getattr(fn, "direct_system", None):
                handlers[fn.direct_system] = attr
        cls.direct_handlers = handlers

    def __init__(self, run):
        """`run` is the runner's Run: its `s3`, `quick`, `latency`, `notes`, `shard`, `record`, measuring and
        `each`."""
        self.run = run
        self.s3 = run.s3
        self.quick = run.quick

    @property
    def shard(self):
        return self.run.shard

    def sizes(self):
        """This workload's sizes for the JSON's "sizes" (the same keys whichever workloads ran)."""
        return {}

    def prepare(self):
        """Puts in S3 (or in memory) what the workload reads, before any workload runs."""

    def cleanup(self):
        """Removes the local files `prepare` made, after the run (whatever happened)."""

    def start(self):
        """Logs the start of a pass; returns False to skip the pass (a tool it needs is missing)."""
        log(f"workload {self.name}")
        return True

    def execute(self):
        if self.start() is not False:
            self.run.each(self.name, self.one)

    def handler(self, m):
        """The method that measures system `m`, or None if this workload does not measure it."""
        if m.kind == "mount":
            return self.through_mount
        name = self.direct_handlers.get(m.name)
        return getattr(self, name) if name else None

    def one(self, m):
        fn = self.handler(m)
        if fn:
            fn(m)

    def through_mount(self, m):
        """Measures a mounting system `m` (fresh, unmounted, empty cache) through its mount point."""
        raise NotImplementedError

    def record(self, figure, unit, better, system, value):
        self.run.record(self.name, figure, unit, better, system, value)

    def start_measure(self, m):
        return self.run.start_measure(m)

    def end_measure(self, token):
        self.run.end_measure(token, self.name)
