"""The benchmark package (bench/ckptbench) without running a benchmark: the registry finds every system and
workload module, `bench/run --help` works and lists them, bad names are refused, a new module is found by
adding a file, and ratios are turned as documented. Fast (no server, no mount); run by scripts/test."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

from ckptbench import registry, report  # noqa: E402
from ckptbench.systems import Direct, Mount, System  # noqa: E402
from ckptbench.workloads import Workload  # noqa: E402

# What bench/run measured before it became a package, in its default order.
SYSTEMS = ["ckptfs", "local", "s5cmd", "boto3", "s3fs", "rclone"]
WORKLOADS = ["read", "save", "small", "random", "meta", "rename"]


def modules(folder):
    return sorted(f[:-3] for f in os.listdir(os.path.join(BENCH, "ckptbench", folder))
                  if f.endswith(".py") and not f.startswith("_"))


def test_every_system_module_registers_one_system_in_the_default_order():
    found = registry.systems()
    assert list(found)[:len(SYSTEMS)] == SYSTEMS
    assert sorted(cls.__module__.rsplit(".", 1)[1] for cls in found.values()) == modules("systems")
    for name, cls in found.items():
        assert issubclass(cls, (Mount, Direct)) and cls.name == name and cls.summary
        if issubclass(cls, Mount):
            assert cls.mount is not Mount.mount, f"{name} does not say how to mount"


def test_every_workload_module_registers_one_workload_whose_direct_handlers_name_real_systems():
    found = registry.workloads()
    assert list(found)[:len(WORKLOADS)] == WORKLOADS
    assert sorted(cls.__module__.rsplit(".", 1)[1] for cls in found.values()) == modules("workloads")
    systems = registry.systems()
    for name, cls in found.items():
        assert cls.name == name and cls.summary
        assert cls.through_mount is not Workload.through_mount, f"{name} does not measure mounts"
        for system, method in cls.direct_handlers.items():
            assert system in systems and issubclass(systems[system], Direct), f"{name}: @direct({system!r})"
            assert callable(getattr(cls, method))
    # What each direct system took part in before: the handlers must all still be there.
    handled = {name: sorted(cls.direct_handlers) for name, cls in found.items()}
    assert handled == {"read": ["boto3", "local", "s5cmd"], "save": ["boto3", "local", "s5cmd"],
                       "small": ["boto3", "s5cmd"], "random": ["boto3"], "meta": ["boto3", "s5cmd"],
                       "rename": ["boto3", "s5cmd"], "preload": ["s5cmd"], "dataloader": ["s3torch"],
                       "torch-save": ["local", "s3torch", "s5cmd"], "torch-load": ["local", "s3torch"],
                       "dcp": ["s3torch"]}
    assert [n for n, c in found.items() if c.latency] == ["read", "small", "meta", "preload", "dataloader",
                                                          "torch-save", "torch-load", "dcp"]


def run_bench(*args):
    return subprocess.run([sys.executable, os.path.join(BENCH, "run"), *args], capture_output=True, text=True,
                          timeout=60)


def test_bench_run_help_lists_every_workload_and_system_with_the_defaults():
    r = run_bench("--help")
    assert r.returncode == 0, r.stderr
    for option in ("--quick", "--workloads", "--systems", "--latency-ms", "--no-latency", "--endpoint-url",
                   "--bucket", "--no-install", "--no-build", "--output", "--report"):
        assert option in r.stdout
    assert f"[--workloads {','.join(registry.workloads())}]" in r.stdout
    assert f"[--systems {','.join(registry.systems())}]" in r.stdout
    for name in list(registry.workloads()) + list(registry.systems()):
        assert f"\n  {name} " in r.stdout


@pytest.mark.parametrize("option", ["--systems", "--workloads"])
def test_bench_run_refuses_an_unknown_name_before_doing_anything(option):
    r = run_bench(option, "nosuch", "--no-build", "--no-install")
    assert r.returncode == 2
    assert f"{option}: unknown nosuch" in r.stderr


def test_a_new_module_is_found_by_adding_the_file(tmp_path, monkeypatch):
    pkg = tmp_path / "extra_systems"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "goofys.py").write_text(textwrap.dedent("""\
        from ckptbench.systems import Mount

        class Goofys(Mount):
            name = "goofys"
            order = 5

            def mount(self):
                pass
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import extra_systems
    assert list(registry._discover(extra_systems, System)) == ["goofys"]


def row(system, value, figure="time to close()", better="lower"):
    return dict(workload="save", figure=figure, unit="s", better=better, system=system, value=value, latency_ms=0)


def test_ratios_are_ckptfs_speed_over_the_other_and_variants_compare_with_the_base_figure():
    rows = [row("ckptfs", 2.0), row("s5cmd", 1.0), row("local", 4.0),
            row("ckptfs", 4.0, "time to close(), upload while writing"),
            dict(row("ckptfs", 300.0, "cold read", "higher"), workload="read"),
            dict(row("s5cmd", 400.0, "cold read", "higher"), workload="read")]
    got = {(r["figure"], r["versus"]): r["ratio"] for r in report.ratios(rows)}
    assert got == {("time to close()", "s5cmd"): 0.5, ("time to close()", "local"): 2.0,
                   ("time to close(), upload while writing", "s5cmd"): 0.25,
                   ("time to close(), upload while writing", "local"): 1.0, ("cold read", "s5cmd"): 0.75}
    table = report.table(rows, report.ratios(rows), ["ckptfs", "local", "s5cmd"], 0)
    assert table.splitlines()[0] == "| workload | figure | unit | ckptfs | local | s5cmd | ckptfs vs local | ckptfs vs s5cmd |"
    assert "| save | time to close() | s | 2.00 | 4.00 | 1.00 | 2.00x | 0.50x |" in table


class FakeRun:
    """What a workload sees of the runner (ckptbench.runner.Run), recording instead of measuring."""

    def __init__(self, systems):
        from ckptbench.runner import Run
        self.systems, self.quick, self.latency, self.notes, self.rows, self.calls = systems, True, 0, [], [], []
        self.s3 = None
        self.record = lambda *a, **kw: Run.record(self, *a, **kw)
        self.each = lambda workload, fn, systems=None: Run.each(self, workload, fn, systems)


def test_torch_workloads_rotate_the_systems_over_rounds_and_record_medians(monkeypatch):
    from ckptbench.workloads import _torch, direct
    monkeypatch.setattr(_torch, "torch_available", lambda: True)
    systems = {n: cls(None) for n, cls in registry.systems().items() if n in ("ckptfs", "s3fs", "s3torch", "s5cmd", "local")}
    for m in systems.values():  # no mounting here
        m.fresh = m.unmount = lambda: None
    run = FakeRun([systems[n] for n in ("ckptfs", "s3fs", "s3torch", "s5cmd", "local")])
    values = {"ckptfs": [3.0, 1.0, 2.0], "s3torch": [5.0, 9.0, 4.0]}

    class Probe(_torch.TorchWorkload):
        def through_mount(self, m):
            run.calls.append(m.name)
            self.sample("t", "s", "lower", m.name, values[m.name][len([c for c in run.calls if c == m.name]) - 1])

        @direct("s3torch")
        def s3torch(self, m):
            run.calls.append(m.name)
            self.sample("t", "s", "lower", m.name, values[m.name][len([c for c in run.calls if c == m.name]) - 1])

    Probe(run).execute()
    # s3fs (a mount other than ckptfs) and the systems without a method are left out; the order rotates.
    assert run.calls == ["ckptfs", "s3torch", "s3torch", "ckptfs", "ckptfs", "s3torch"]
    got = {r["system"]: (r["value"], r["rounds"]) for r in run.rows}
    assert got == {"ckptfs": (2.0, [3.0, 1.0, 2.0]), "s3torch": (5.0, [5.0, 9.0, 4.0])}


def test_torch_workloads_skip_with_a_note_without_torch(monkeypatch):
    from ckptbench.workloads import _torch
    monkeypatch.setattr(_torch, "torch_available", lambda: False)
    run = FakeRun([])
    registry.workloads()["torch-save"](run).execute()
    assert run.rows == [] and "no torch" in run.notes[0]


def test_a_missing_s3torch_is_installed_as_root_by_its_own_install(monkeypatch):
    from ckptbench import runner
    from ckptbench.systems.s3torch import S3Torch
    installed = []
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner.shutil, "which", lambda tool: None)  # no apt-get: only install() runs
    monkeypatch.setattr(S3Torch, "available", classmethod(lambda cls: False))
    monkeypatch.setattr(S3Torch, "install", classmethod(lambda cls: installed.append(cls.name)))
    runner.install_missing(["ckptfs", "s3torch"])
    assert installed == ["s3torch"]


def test_the_reference_checkpoint_is_removed_after_the_run(tmp_path):
    run = FakeRun([])
    save, load = registry.workloads()["torch-save"](run), registry.workloads()["torch-load"](run)
    assert save.ref is load.ref  # one reference checkpoint per run
    save.ref.path = str(tmp_path / "torch-ckpt.pt")
    (tmp_path / "torch-ckpt.pt").write_bytes(b"x")
    from ckptbench.runner import Run
    Run.cleanup_prepared(type("R", (), {"shard": type("S", (), {"cleanup": lambda self: None})()})(), [save, load])
    assert not (tmp_path / "torch-ckpt.pt").exists()
