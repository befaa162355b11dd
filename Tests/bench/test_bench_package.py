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
                       "rename": ["boto3", "s5cmd"], "preload": ["s5cmd"], "dataloader": ["s3torch"]}
    assert [n for n, c in found.items() if c.latency] == ["read", "small", "meta", "preload", "dataloader"]


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
