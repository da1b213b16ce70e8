"""The heat map of a ``gpukb bench --grid`` run: gpukb's time / the fastest peer's per cell (B x
H), one map per gpukb backend, workload and dtype; as data (``cells``), as Markdown tables for the
README (``markdown``) and as a PNG (``plot``, needs matplotlib).

Everything here reads the grid's JSON document only, so a saved run can be drawn again:
``python -m gpukb.bench.heatmap grid.json [--plot grid.png]`` prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TITLES = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}


def _point(entry) -> tuple:
    size = entry["size"]
    return entry["workload"], entry["dtype"], size["B"], size["H"]


def cells(doc: dict) -> list[dict]:
    """One map per gpukb backend x workload x dtype: rows ``batches``, columns ``units``; per
    cell gpukb's ratio to the fastest peer (None: gpukb or every peer failed or is n/a), the
    fastest peer's key, both GFLOP/s as fractions of the dtype's GEMM peak, and T."""
    settings = doc["settings"]
    ok = [e for e in doc["results"] if e["status"] == "ok"]
    gpukb = {(e["key"],) + _point(e): e for e in ok if e["kind"] == "gpukb"}
    fastest: dict = {}
    for e in ok:
        if e["kind"] == "peer":
            best = fastest.get(_point(e))
            if best is None or e["median_ms"] < best["median_ms"]:
                fastest[_point(e)] = e
    steps = {_point(e): e["size"]["T"] for e in doc["results"]}
    keys = list(dict.fromkeys(e["key"] for e in doc["results"] if e["kind"] == "gpukb"))
    maps = []
    for key in keys:
        for workload in settings["workloads"]:
            for dtype in settings["dtypes"]:
                table: dict = {"ratio": [], "gpukb_fraction": [], "fastest_peer": [],
                               "fastest_peer_fraction": [], "steps": []}
                for batch in settings["batches"]:
                    rows: dict = {name: [] for name in table}
                    for units in settings["units"]:
                        point = (workload, dtype, batch, units)
                        mine, peer = gpukb.get((key,) + point), fastest.get(point)
                        rows["ratio"].append(mine["ratio_to_fastest_peer"] if mine else None)
                        rows["gpukb_fraction"].append(
                            mine["fraction_of_gemm_peak"] if mine else None)
                        rows["fastest_peer"].append(peer["key"] if peer else None)
                        rows["fastest_peer_fraction"].append(
                            peer["fraction_of_gemm_peak"] if peer else None)
                        rows["steps"].append(steps.get(point))
                    for name in table:
                        table[name].append(rows[name])
                maps.append({"gpukb": key, "workload": workload, "dtype": dtype,
                             "batches": list(settings["batches"]),
                             "units": list(settings["units"]), **table})
    return maps


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

def _ratio_text(ratio) -> str:
    if ratio is None:
        return "–"
    text = f"{ratio:.2f}"
    return f"**{text}**" if ratio < 1 else text


def percent(value) -> str:
    """A fraction as a percentage, one decimal below 10%; "–" for None."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if value < 0.1 else f"{100 * value:.0f}%"


def _fraction_text(mine, peer) -> str:
    return f"{percent(mine)} ({percent(peer)})"


def _table(heat: dict, cell) -> list[str]:
    units = heat["units"]
    lines = ["| B \\ H | " + " | ".join(map(str, units)) + " |",
             "|---:|" + "---:|" * len(units)]
    for i, batch in enumerate(heat["batches"]):
        lines.append(f"| {batch} | " + " | ".join(cell(i, j) for j in range(len(units))) + " |")
    return lines


def summary(heat: dict) -> str:
    """``"gpukb fastest in 5 of 9 cells; from 0.41x (B=1, H=64) to 1.38x (B=8, H=256)"``."""
    known = [(r, b, h) for row, b in zip(heat["ratio"], heat["batches"])
             for r, h in zip(row, heat["units"]) if r is not None]
    if not known:
        return "no cell has both a gpukb and a peer time"
    wins = sum(1 for r, _, _ in known if r < 1)
    low, high = min(known), max(known)
    peers: dict = {}
    for row in heat["fastest_peer"]:
        for key in row:
            if key is not None:
                peers[key] = peers.get(key, 0) + 1
    fastest = ", ".join(f"{key} {count}" for key, count in
                        sorted(peers.items(), key=lambda item: -item[1]))
    return (f"gpukb fastest in {wins} of {len(known)} cells; from {low[0]:.2f}x (B={low[1]}, "
            f"H={low[2]}) to {high[0]:.2f}x (B={high[1]}, H={high[2]}); fastest peer (cells): "
            f"{fastest}")


def header(doc: dict) -> list[str]:
    machine, settings, gemm = doc["machine"], doc["settings"], doc["gemm_peak"]
    commit = f" ({machine['gpukb_commit']})" if machine.get("gpukb_commit") else ""
    peaks = ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in gemm["gflops"].items())
    versions = ", ".join(f"{name} {version}" for i in doc["implementations"]
                         for name, version in i["versions"].items() if name != "gpukb")
    lines = [f"gpukb bench --grid: gpukb {machine['versions']['gpukb']}{commit}, "
             f"{machine['cpu']}, {machine['usable_cores']} usable cores, {machine['date']}; "
             f"{', '.join(i['key'] for i in doc['implementations'])} ({versions}).",
             f"GEMM peak ({gemm['library']} {gemm['n']}x{gemm['n']}, {gemm['threads']} "
             f"thread(s), best of before and after the run): {peaks}. T: "
             f"{settings['steps_rule']}. Each point: median of up to {settings['repeats']} calls "
             f"within {settings['budget_s']:g} s after two untimed ones, best of "
             f"{settings['rounds']} interleaved round(s)."]
    lines += [f"Skipped: {s['name']}: {s['reason']}." for s in doc["skipped"]]
    not_run = {(e["implementation"], e["dtype"]): e["error"] for e in doc["results"]
               if e["status"] == "n/a"}
    lines += [f"n/a: {name} in {dtype}: {reason}." for (name, dtype), reason in not_run.items()]
    return lines


def markdown(doc: dict) -> str:
    """The heat maps as Markdown: for each gpukb backend, workload and dtype, a table of gpukb's
    time / the fastest peer's (bold where gpukb is the fastest) and one of GFLOP/s as a
    percentage of the GEMM peak (gpukb's, then the fastest peer's in parentheses)."""
    lines = header(doc)
    for heat in doc.get("heatmaps") or cells(doc):
        title = f"{TITLES.get(heat['workload'], heat['workload'])}, {heat['dtype']}"
        lines += ["", f"**{title}**: {heat['gpukb']} time / fastest peer's time (below 1: gpukb "
                  f"faster; bold: gpukb fastest); {summary(heat)}.", ""]
        lines += _table(heat, lambda i, j: _ratio_text(heat["ratio"][i][j]))
        lines += ["", f"{title}: GFLOP/s as % of the {heat['dtype']} GEMM peak, {heat['gpukb']} "
                  f"(fastest peer).", ""]
        lines += _table(heat, lambda i, j: _fraction_text(heat["gpukb_fraction"][i][j],
                                                         heat["fastest_peer_fraction"][i][j]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------

#: The colour scale spans gpukb 4x faster to 4x slower (log2 ratio -2 to 2), 1.0 in the middle.
LOG2_LIMIT = 2.0


def plot(doc: dict, path) -> None:
    """One panel per gpukb backend x workload (rows) and dtype (columns): log2 of gpukb's time /
    the fastest peer's as colour (green: gpukb faster), each cell labelled with the ratio and
    gpukb's GFLOP/s as % of the GEMM peak; grey where there is no ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    maps = doc.get("heatmaps") or cells(doc)
    if not any(r is not None for heat in maps for row in heat["ratio"] for r in row):
        raise ValueError("nothing to draw: no cell has both a gpukb and a peer time.")
    dtypes = list(dict.fromkeys(h["dtype"] for h in maps))
    rows = list(dict.fromkeys((h["gpukb"], h["workload"]) for h in maps))
    width = max(len(h["units"]) for h in maps)
    height = max(len(h["batches"]) for h in maps)
    fig, axes = plt.subplots(len(rows), len(dtypes), squeeze=False,
                             figsize=(max(0.9 * width * len(dtypes) + 1.5, 7.0),
                                      0.55 * height * len(rows) + 1.4))
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="lightgrey")
    image = None
    for heat in maps:
        ax = axes[rows.index((heat["gpukb"], heat["workload"]))][dtypes.index(heat["dtype"])]
        ratio = np.array([[np.nan if r is None else r for r in row] for row in heat["ratio"]])
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.ma.masked_invalid(np.log2(ratio))
        image = ax.imshow(shown, cmap=cmap, vmin=-LOG2_LIMIT, vmax=LOG2_LIMIT, aspect="auto")
        for i in range(ratio.shape[0]):
            for j in range(ratio.shape[1]):
                fraction = heat["gpukb_fraction"][i][j]
                text = "n/a" if math.isnan(ratio[i, j]) else f"{ratio[i, j]:.2f}"
                if fraction is not None:
                    text += "\n" + percent(fraction)
                ax.text(j, i, text, ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(heat["units"])), heat["units"], fontsize=7)
        ax.set_yticks(range(len(heat["batches"])), heat["batches"], fontsize=7)
        ax.set_xlabel("H (D = H/2)", fontsize=7)
        ax.set_ylabel("B", fontsize=7)
        ax.set_title(f"{TITLES.get(heat['workload'], heat['workload'])} {heat['dtype']} "
                     f"({heat['gpukb']})", fontsize=8)
    machine = doc["machine"]
    fig.suptitle(f"gpukb time / fastest peer's (green: gpukb faster); %: gpukb's GFLOP/s of the "
                 f"GEMM peak\n{machine['cpu']}, {machine['usable_cores']} cores, "
                 f"{machine['date'][:10]}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    assert image is not None   # at least one heat map was drawn
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    ticks = [float(t) for t in range(-int(LOG2_LIMIT), int(LOG2_LIMIT) + 1)]
    bar.set_ticks(ticks, labels=[f"{2.0 ** t:g}x" for t in ticks], fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpukb.bench.heatmap",
        description="Print the Markdown heat map of a saved `gpukb bench --grid --json` run "
                    "and optionally draw it.")
    parser.add_argument("json", metavar="GRID.json")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw it (needs matplotlib)")
    args = parser.parse_args(argv)
    try:
        doc = json.loads(Path(args.json).read_text())
    except (OSError, ValueError) as error:
        parser.error(f"{args.json}: cannot read it as JSON ({error}).")
    from .grid import SCHEMA

    if doc.get("schema") != SCHEMA:
        parser.error(f"{args.json}: not a grid run (schema {doc.get('schema')!r}, expected "
                     f"{SCHEMA!r}).")
    print(markdown(doc))
    if args.plot:
        plot(doc, args.plot)
        print(f"saved {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
