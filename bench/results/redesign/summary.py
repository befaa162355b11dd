"""Medians of before-N/after-N suite JSONs: ckptfs figures, after/before speed ratio, within-binary spread,
and the suite's ratios (ckptfs vs s5cmd/local) per binary."""
import glob, json, os, statistics as st, sys
D = sys.argv[1]
runs = {}
for p in sorted(glob.glob(os.path.join(D, "*-[0-9].json"))):
    lab = os.path.basename(p)[:-5]
    runs.setdefault(lab.split("-")[0], []).append(json.load(open(p)))
def vals(side, wl, fig, sysname):
    return [r["value"] for run in runs[side] for r in run["results"]
            if r["workload"] == wl and r["figure"] == fig and r["system"] == sysname]
def rvals(side, wl, fig, vs):
    return [r["ratio"] for run in runs[side] for r in run["ratios"]
            if r["workload"] == wl and r["figure"] == fig and r["versus"] == vs]
keys = []
for r in runs["before"][0]["results"]:
    k = (r["workload"], r["figure"], r["unit"], r["better"])
    if k not in keys:
        keys.append(k)
fmt = lambda v: f"{v:.3g}" if v < 100 else f"{v:.0f}"
print(f"rounds: before {len(runs['before'])}, after {len(runs['after'])}")
print("| workload | figure | unit | system | before (runs) | after (runs) | before median | after median | after/before speed | max/min of one binary's runs |")
print("|---|---|---|---|---|---|---|---|---|---|")
for wl, fig, unit, better in keys:
    for s in ["ckptfs", "local", "s5cmd"]:
        b, a = vals("before", wl, fig, s), vals("after", wl, fig, s)
        if not b or not a:
            continue
        mb, ma = st.median(b), st.median(a)
        sp = (ma / mb) if better == "higher" else (mb / ma)
        spread = max(max(x) / min(x) for x in (b, a))
        print(f"| {wl} | {fig} | {unit} | {s} | {', '.join(fmt(v) for v in b)} | {', '.join(fmt(v) for v in a)} | "
              f"{fmt(mb)} | {fmt(ma)} | {sp:.2f}x | {spread:.2f}x |")
print()
print("| workload | figure | ckptfs vs | before (runs) | after (runs) | before median | after median | after/before |")
print("|---|---|---|---|---|---|---|---|")
seen = []
for r in runs["before"][0]["ratios"]:
    k = (r["workload"], r["figure"], r["versus"])
    if k in seen:
        continue
    seen.append(k)
    b, a = rvals("before", *k), rvals("after", *k)
    if not a:
        continue
    print(f"| {k[0]} | {k[1]} | {k[2]} | {', '.join(f'{v:.2f}' for v in b)} | {', '.join(f'{v:.2f}' for v in a)} | "
          f"{st.median(b):.2f}x | {st.median(a):.2f}x | {st.median(a) / st.median(b):.2f} |")
print()
print("| ckptfs daemon | before CPU s (median) | after CPU s | before peak RSS MiB | after peak RSS MiB |")
print("|---|---|---|---|---|")
for w in runs["before"][0]["ckptfs_daemon"]:
    f = lambda side, k: st.median([run["ckptfs_daemon"][w][k] for run in runs[side] if w in run["ckptfs_daemon"]])
    print(f"| {w} | {f('before','cpu_s'):.2f} | {f('after','cpu_s'):.2f} | {f('before','peak_rss_bytes')/2**20:.0f} | {f('after','peak_rss_bytes')/2**20:.0f} |")
