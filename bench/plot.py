"""Turn bench/results/*.json into PNG plots and bench/results/TABLE.md (included by the README).

Reads whatever result files exist; a benchmark that has not been run is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench import common
from bench.cpu_scaling import shown as cpu_scaling_shown


def load(name: str) -> dict | None:
    path = os.path.join(common.RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(common.fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _targets_md(doc: dict) -> str:
    headers, rows = common.target_table(doc.get("targets", []))
    return _md_table(headers, rows) if rows else ""


# -- per benchmark: (markdown, figure) ---------------------------------------------------------------------

def channels(doc: dict, plt) -> str:
    md = []
    kinds = list(doc["payloads"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        p = doc["payloads"][kind]
        names = list(p["contenders"])
        ax.barh(names, [p["contenders"][k]["mb_per_s"] for k in names], color="tab:blue")
        ax.set_title(f"{kind} ({p['record_bytes']} B/record)")
        ax.set_xlabel("MB/s")
        ax.invert_yaxis()
        rows = [[k, m["records_per_s"], m["mb_per_s"], m["vs_mp_queue"], m.get("pct_of_memcpy")]
                for k, m in p["contenders"].items()]
        runs = doc.get("params", {}).get("runs")
        md.append(f"**{kind}** ({p['record_bytes']} B/record, n={p['n']}, median of {runs} rounds)\n\n"
                  + _md_table(["contender", "records/s", "MB/s", "x mp.Queue", "% memcpy"], rows))
    fig.tight_layout()
    _save(fig, "channels.png", plt)
    mc = doc.get("memcpy", {})
    md.append("numpy.copyto, MB/s: " + ", ".join(f"{k} {common.fmt(v['mb_per_s'])}" for k, v in mc.items()))
    lat = doc.get("latency", {})
    md.append(_md_table(["round trip", "median us", "p99 us"],
                        [[k, v and v["median_us"], v and v["p99_us"]] for k, v in lat.items()]))
    md += _failures_md(doc)
    return "\n\n".join(md)


def cpu_scaling(doc: dict, plt) -> str:
    md = []
    grains = list(doc["grains"])
    w = doc["params"]["workers"]
    fig, axes = plt.subplots(1, len(grains), figsize=(5 * len(grains), 3.6), squeeze=False)
    for ax, grain in zip(axes[0], grains, strict=True):
        c = {k: v for k, v in doc["grains"][grain]["contenders"].items() if cpu_scaling_shown(k)}
        # Whiskers: the speed-ups of the contender's slowest and fastest runs (against the sequential
        # median), because on a shared machine the spread says as much as the median.
        seq = c.get("sequential", {}).get("median")
        spread = [[v["speedup"] - seq / max(v["times"]), seq / min(v["times"]) - v["speedup"]]
                  if seq and v.get("times") and v.get("speedup") else [0, 0] for v in c.values()]
        ax.barh(list(c), [v["speedup"] for v in c.values()], color="tab:green",
                xerr=list(map(list, zip(*spread, strict=True))) if spread else None, capsize=3)
        ax.axvline(w, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"grain {grain}, W={w}")
        ax.set_xlabel("speed-up over sequential")
        ax.invert_yaxis()
        rows = [[k, v["median"], _run_range(v.get("times")), v["speedup"], v["efficiency"]] for k, v in c.items()]
        runs = doc["grains"][grain].get("runs", doc["params"].get("runs"))
        md.append(f"**grain {grain}** (n={doc['grains'][grain]['n']}, W={w}, median of {runs} rounds)\n\n"
                  + _md_table(["contender", "seconds", "fastest to slowest run", "speed-up", "speed-up/W"], rows))
    fig.tight_layout()
    _save(fig, "cpu_scaling.png", plt)
    md += _failures_md(doc)
    return "\n\n".join(md)


def _run_range(times: list[float] | None) -> str:
    return f"{common.fmt(min(times))} to {common.fmt(max(times))}" if times else "n/a"


def _failures_md(doc: dict) -> list[str]:
    """A contender that failed or was skipped in this run is named, not silently left out."""
    lines = [f"- {what}: {why}" for kind in ("failed", "skipped") for what, why in doc.get(kind, {}).items()]
    return ["Not measured in this run:\n\n" + "\n".join(lines)] if lines else []


def startup(doc: dict, plt) -> str:
    s = doc["startup"]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.barh(list(s), [v["median"] for v in s.values()], color="tab:orange")
    ax.set_xlabel("seconds (16 processes, start + tear-down)")
    ax.invert_yaxis()
    fig.tight_layout()
    _save(fig, "startup.png", plt)
    md = [_md_table(["contender", "start-up + tear-down s"], [[k, v["median"]] for k, v in s.items()])]
    md.append(_md_table(["process", "PSS MiB", "RSS MiB", "private MiB"],
                        [[k, v["pss_median_kb"] / 1024, v["rss_median_kb"] / 1024, v["private_median_kb"] / 1024]
                         for k, v in doc["memory"].items()]))
    return "\n\n".join(md)


def memory(doc: dict, plt) -> str:
    cs = doc["contenders"]
    fig, axes = plt.subplots(1, len(cs), figsize=(4.5 * len(cs), 3.2), squeeze=False, sharey=True)
    for ax, (name, r) in zip(axes[0], cs.items(), strict=True):
        for p in r["processes"].values():
            ts, mbs = zip(*p["series"], strict=True)
            ax.plot(ts, mbs, label=p["role"])
        ax.set_title(name)
        ax.set_xlabel("seconds")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("RSS MiB")
    fig.tight_layout()
    _save(fig, "memory.png", plt)
    prm = doc["params"]
    return (f"{prm['n']} records of {prm['record_bytes'] // 1024} KiB, sink sleeps {prm['sleep_ms']} ms/record\n\n"
            + _md_table(["contender", "max RSS growth MiB", "flat"],
                        [[k, r["max_growth_mb"], r["flat"]] for k, r in cs.items()]))


def services(doc: dict, plt) -> str:
    entries = doc["callers"]
    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [f"{c} caller(s)" for c in entries]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [e["procflow"]["rt_per_s"] for e in entries.values()], 0.4, label="procflow")
    ax.bar([x + 0.2 for x in xs], [e["manager"]["rt_per_s"] for e in entries.values()], 0.4,
           label="multiprocessing.Manager")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("round trips / s")
    ax.legend()
    fig.tight_layout()
    _save(fig, "services.png", plt)
    rows = [[c, e["procflow"]["rt_per_s"], e["manager"]["rt_per_s"], e["ratio"], e["procflow"]["cpu_us_per_call"],
             e["manager"]["cpu_us_per_call"]] for c, e in entries.items()]
    return (f"{doc['params']['calls']} synchronous calls per caller task\n\n"
            + _md_table(["callers", "procflow rt/s", "Manager rt/s", "x Manager", "procflow CPU us/call",
                         "Manager CPU us/call"], rows))


def etl(doc: dict, plt) -> str:
    shapes = doc["shapes"]
    w = doc["params"]["workers"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.0), squeeze=False)
    md = []
    for ax, (shape, case) in zip(axes[0], shapes.items(), strict=True):
        c = case["contenders"]
        ax.barh(list(c), [v["speedup"] for v in c.values()], color="tab:purple")
        ax.axvline(w, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{shape}, W={w}")
        ax.set_xlabel("speed-up over the plain loop")
        ax.invert_yaxis()
        rows = [[k, v["median"], _run_range(v.get("times")), v["speedup"], v["per_core"]] for k, v in c.items()]
        md.append(f"**{shape}** ({doc['params']['lines']:,} lines, {doc['params']['bytes'] / 1e6:.0f} MB, "
                  f"W={w}, median of {doc['params']['runs']} rounds)\n\n"
                  + _md_table(["contender", "seconds", "fastest to slowest run", "speed-up vs plain", "per core"],
                              rows))
    fig.tight_layout()
    _save(fig, "etl.png", plt)
    md += _failures_md(doc)
    return "\n\n".join(md)


def files(doc: dict, plt) -> str:
    cases = doc["cases"]
    prm = doc["params"]
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 2.6), squeeze=False)
    md = []
    for ax, (case, entry) in zip(axes[0], cases.items(), strict=True):
        c = entry["contenders"]
        ax.barh(list(c), [v["mb_per_s"] for v in c.values()], color="tab:brown")
        ax.set_title(case)
        ax.set_xlabel("MB/s")
        ax.invert_yaxis()
        rows = [[k, v["median"], _run_range(v.get("times")), v["lines_per_s"], v["mb_per_s"]] for k, v in c.items()]
        md.append(f"**{case}** ({prm['bytes'] / 1e6:.0f} MB of JSONL, {prm['lines']:,} lines, W={prm['workers']}, "
                  f"median of {prm['runs']} rounds)\n\n"
                  + _md_table(["contender", "seconds", "fastest to slowest run", "lines/s", "MB/s"], rows))
    fig.tight_layout()
    _save(fig, "files.png", plt)
    md += _failures_md(doc)
    return "\n\n".join(md)


def _save(fig, name: str, plt) -> None:
    path = os.path.join(common.RESULTS_DIR, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {os.path.relpath(path, common.REPO_ROOT)}")


SECTIONS = [("channels", "Channels: one producer -> one consumer", channels),
            ("cpu_scaling", "CPU scaling", cpu_scaling),
            ("startup", "Start-up and memory per task", startup),
            ("memory", "Back-pressure: RSS under a slow sink", memory),
            ("services", "Services: synchronous round trips", services),
            ("etl", "ETL: a CSV group-by against the plain loop", etl),
            ("files", "Files: reading 1 GB of JSONL", files)]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__).parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts, machine = [], None
    for name, title, fn in SECTIONS:
        doc = load(name)
        if doc is None:
            print(f"NOTE: no results/{name}.json; skipped")
            continue
        machine = machine or doc["machine"]
        quick = " (--quick: smoke-run sizes, not a measurement)" if doc["params"].get("quick") else ""
        body = fn(doc, plt)
        targets = _targets_md(doc)
        parts.append(f"### {title}{quick}\n\n![{name}]({name}.png)\n\n{body}"
                     + (f"\n\nTargets:\n\n{targets}" if targets else ""))
    if machine:
        head = (f"Machine: {machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}, "
                f"start method {machine['start_method']}.")
        text = "<!-- generated by `python -m bench.plot`; do not edit -->\n\n" + head + "\n\n" + "\n\n".join(parts)
        path = os.path.join(common.RESULTS_DIR, "TABLE.md")
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"wrote {os.path.relpath(path, common.REPO_ROOT)}")
        _update_readme(text)


def _update_readme(table: str) -> None:
    """Put the table between the README's bench-table markers, so its figures are never typed by hand."""
    readme = os.path.join(common.REPO_ROOT, "README.md")
    start, end = "<!-- bench-table -->", "<!-- /bench-table -->"
    try:
        with open(readme) as f:
            text = f.read()
    except FileNotFoundError:
        return
    if start not in text or end not in text:
        return
    body = table.replace("](", "](bench/results/").replace("### ", "#### ")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    with open(readme, "w") as f:
        f.write(f"{head}{start}\n{body}\n{end}{tail}")
    print("updated README.md")


if __name__ == "__main__":
    main(sys.argv[1:])
