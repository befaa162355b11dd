"""Results: ratios, the Markdown tables, the bar charts and the JSON under bench/results, and the machine and
version facts that go with them. Also `save_results`, the writer of the standalone scripts.

A result row is {workload, figure, unit, better ("higher"/"lower"), system, value, latency_ms}. A ratio is
{latency_ms, workload, figure, versus, ratio}: ckptfs's speed over the other system's (above 1: ckptfs is
faster), i.e. ckptfs/other for a "higher" figure and other/ckptfs for a "lower" one.
"""
import json
import os
import platform
import shutil
import time

from . import registry
from .common import MiB, RESULTS, ROOT, SUBJECT, command_version, log


def ratios(rows):
    """For each figure: ckptfs's speed relative to each other system (>1: ckptfs is faster)."""
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r["latency_ms"], r["workload"], r["figure"]), {})[r["system"]] = r
    for (lat, wl, fig), by in groups.items():
        ck = by.get(SUBJECT)
        if not ck:
            continue
        # A ckptfs-only variant of a figure (", upload while writing") is compared with the others' figure.
        base = fig.split(", upload while writing")[0]
        if base != fig:
            by = dict(groups.get((lat, wl, base), {}), **{SUBJECT: ck})
        for s, r in by.items():
            if s == SUBJECT or not r["value"] or not ck["value"]:
                continue
            ratio = ck["value"] / r["value"] if ck["better"] == "higher" else r["value"] / ck["value"]
            out.append(dict(latency_ms=lat, workload=wl, figure=fig, versus=s, ratio=ratio))
    return out


def table(rows, rats, names, latency):
    """The Markdown table of one latency: a column per system, then one per ratio."""
    others = [n for n in names if n != SUBJECT]
    lines = ["| workload | figure | unit | " + " | ".join(names) + " | " + " | ".join(f"{SUBJECT} vs {o}" for o in others) + " |",
             "|---|---|---|" + "---|" * (len(names) + len(others))]
    groups = {}
    for r in rows:
        if r["latency_ms"] == latency:
            groups.setdefault((r["workload"], r["figure"], r["unit"]), {})[r["system"]] = r["value"]
    rmap = {(r["workload"], r["figure"], r["versus"]): r["ratio"] for r in rats if r["latency_ms"] == latency}
    for (wl, fig, unit), by in groups.items():
        vals = [fmt(by.get(n)) for n in names]
        rs = [f"{rmap[(wl, fig, o)]:.2f}x" if (wl, fig, o) in rmap else "" for o in others]
        lines.append(f"| {wl} | {fig} | {unit} | " + " | ".join(vals) + " | " + " | ".join(rs) + " |")
    return "\n".join(lines)


def fmt(v):
    if v is None:
        return ""
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}"


def plot(rows, latency, path, systems):
    """Bar charts, one per figure; `systems` are names. False if matplotlib is missing or nothing to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figs = []
    for r in rows:
        if r["latency_ms"] == latency and (r["workload"], r["figure"], r["unit"]) not in figs:
            figs.append((r["workload"], r["figure"], r["unit"]))
    if not figs:
        return False
    cols = 3
    nrows = (len(figs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 4.2, nrows * 3.0), squeeze=False)
    colors = {name: cls.color for name, cls in registry.systems().items()}
    for ax, (wl, f, unit) in zip(axes.flat, figs):
        by = {r["system"]: r["value"] for r in rows if r["latency_ms"] == latency and r["workload"] == wl and r["figure"] == f}
        names = [n for n in systems if n in by]
        ax.bar(names, [by[n] for n in names], color=[colors.get(n, "#999") for n in names])
        ax.set_title(f"{wl}: {f}", fontsize=8)
        ax.set_ylabel(unit + (" (lower is better)" if unit == "s" else ""), fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(figs):]:
        ax.axis("off")
    fig.suptitle(f"ckptfs benchmark suite, {'loopback' if latency == 0 else f'{latency} ms each way'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def versions():
    """{tool: version line} for every registered system, every workload's tools and the server (weed); tools
    that are not installed are left out."""
    v = {}
    for name, cls in registry.systems().items():
        found = cls.version()
        if found:
            v[name] = found
    commands = {}
    for cls in registry.workloads().values():
        commands.update(cls.version_commands)
    commands["weed"] = ["weed", "version"]
    for name, cmd in commands.items():
        found = command_version(cmd)
        if found:
            v[name] = found
    return v


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "memory_bytes": mem, "cpu": model, "kernel": platform.release(),
            "disk_free_bytes": shutil.disk_usage(ROOT).free}


def report(output, command, rows, names, daemon, notes, lat, facts, minutes):
    """Writes bench/results/OUTPUT.{md,json,png} and prints the tables.

    `names` are the systems' columns in order, `daemon` {"WORKLOAD@LATms": {cpu_s, peak_rss_bytes}}, `lat`
    the latencies in ms (0 = loopback), `facts` what else goes in the JSON (machine, versions, endpoint,
    sizes), `minutes` the run's length (0: unknown)."""
    rats = ratios(rows)
    took = f", {minutes:.0f} min" if minutes else ""
    md = [f"Command: `{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}{took}). "
          f"Ratios: ckptfs's speed over the other system's (>1: ckptfs faster).", ""]
    for latency in lat:
        md += [f"### {'Loopback' if latency == 0 else f'With {latency:g} ms added each way (latency proxy)'}", "",
               table(rows, rats, names, latency), ""]
    if daemon:
        md += ["### ckptfs daemon per workload", "", "| workload | CPU s | peak RSS MiB |", "|---|---|---|"]
        for k, d in daemon.items():
            md.append(f"| {k} | {d['cpu_s']:.1f} | {d['peak_rss_bytes'] / MiB:.0f} |")
        md.append("")
    if notes:
        md += ["Notes: " + "; ".join(notes), ""]
    text = "\n".join(md)
    print(text)
    with open(os.path.join(RESULTS, output + ".md"), "w") as f:
        f.write(text)
    pngs = []
    for latency in lat:
        p = os.path.join(RESULTS, output + ("" if latency == 0 else "-latency") + ".png")
        if plot(rows, latency, p, names):
            pngs.append(os.path.relpath(p, ROOT))
    doc = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **facts,
           "systems": names, "latencies_ms": lat, "minutes": minutes,
           "results": rows, "ratios": rats, "ckptfs_daemon": daemon, "notes": notes, "plots": pngs}
    with open(os.path.join(RESULTS, output + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    log(f"wrote bench/results/{output}.json, .md" + (", " + ", ".join(pngs) if pngs else ""))


def rereport(path):
    """--report FILE: the tables and plots again from a results file (after editing notes, say)."""
    with open(path) as f:
        d = json.load(f)
    facts = {k: d[k] for k in ("machine", "versions", "endpoint", "sizes") if k in d}
    rows = d["results"]
    names = d.get("systems") or list(dict.fromkeys(r["system"] for r in rows))
    lat = d.get("latencies_ms") or sorted({r["latency_ms"] for r in rows})
    report(os.path.splitext(os.path.basename(path))[0], d["command"], rows, names, d["ckptfs_daemon"],
           d["notes"], lat, facts, d.get("minutes", 0))


def save_results(name, res, lines):
    """For the standalone scripts: writes bench/results/NAME.json (`res`, which holds `command` and `date`)
    and NAME.md: a line naming the command, then `lines`. Returns the Markdown lines."""
    out = [f"Command: `{res['command']}` ({res['date']}, {os.cpu_count()} cores, server on the same machine).", ""]
    out += lines
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(out) + "\n")
    return out
