"""PNG plots of a benchmark run, for docs/benchmarks.md.

`render(results, out_dir)` takes the dict `bench/run.py` writes to `bench/results/latest.json`
(keys `redirect`, `cni`, `redirect_cost`, `proxy`, `mesh`; any may be missing) and draws what
reads better as a picture than as a table:

- `proxy-path.png`: round-trip latency (p50/p99), connection rate and throughput of every
  proxy path (direct, meshnode one/two hops, copy path, eBPF, HAProxy);
- `redirect-cost.png`: connect() p50/p99 per redirection backend against the baseline;
- `redirect-apply.png`: apply/remove p50 and p99 per backend;
- `mesh-path.png`: direct vs the two-hop HBONE mTLS path (only if `mesh` is present).

Standalone: `.venv/bin/python bench/plots.py [latest.json] [out_dir]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt

# Order and labels as in bench/proxy_path.py's report().
PROXY_ROWS = [
    ("a_direct", "direct"),
    ("b_one_hop", "1 hop"),
    ("b_one_hop_ebpf", "1 hop\neBPF"),
    ("d_haproxy", "HAProxy\n1 hop"),
    ("c_two_hops", "2 hops"),
    ("c_two_hops_ebpf", "2 hops\neBPF"),
    ("c_two_hops_copy", "2 hops\ncopy"),
]
COLOURS = {"a_direct": "#7f7f7f", "d_haproxy": "#ff7f0e"}
MESHNODE = "#1f77b4"
DPI = 110


def _spread(rows: dict[str, Any], keys: list[str], metric: str) -> list[list[float]] | None:
    """Error bars from the rows' rounds: [below, above] the median (min, max), or None for
    results recorded before rounds existed."""
    if not all("rounds" in rows[k] for k in keys):
        return None
    lo, hi = [], []
    for k in keys:
        got, mid = rows[k]["rounds"][metric], rows[k][metric]
        lo.append(mid - min(got))
        hi.append(max(got) - mid)
    return [lo, hi]


def _bars(ax: Any, labels: list[str], values: list[float], colours: list[str],
          fmt: str, err: list[list[float]] | None = None) -> None:
    bars = ax.bar(range(len(values)), values, color=colours, yerr=err, capsize=3,
                  error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def proxy_path(r: dict[str, Any], out: Path) -> Path:
    rows = r["rows"]
    keys = [(k, name) for k, name in PROXY_ROWS if k in rows]
    labels = [name for _, name in keys]
    colours = [COLOURS.get(k, MESHNODE) for k, _ in keys]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    p50 = [rows[k]["p50_us"] for k, _ in keys]
    p99 = [rows[k]["p99_us"] for k, _ in keys]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, color=colours, label="p50")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, color=colours, alpha=0.45, label="p99")
    for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
        ax.annotate(f"{a:.0f}", (i - 0.2, a), ha="center", va="bottom", fontsize=7)
        ax.annotate(f"{b:.0f}", (i + 0.2, b), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_title("Round trip, 1 KiB ping-pong (µs; solid p50, light p99)", fontsize=10)
    ax.set_ylabel("µs (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ks = [k for k, _ in keys]
    _bars(axes[1], labels, [rows[k]["conn_s"] for k in ks], colours, "{:.0f}",
          _spread(rows, ks, "conn_s"))
    axes[1].set_title("Connection rate (connect, echo, close; 8 clients)", fontsize=10)
    axes[1].set_ylabel("connections/s (higher is better)")
    _bars(axes[2], labels, [rows[k]["gbps"] for k in ks], colours, "{:.1f}",
          _spread(rows, ks, "gbps"))
    axes[2].set_title("Throughput, one iperf3 stream", fontsize=10)
    axes[2].set_ylabel("Gbit/s (higher is better)")
    fig.suptitle("The proxy on the data path: meshnode (blue) vs direct (grey) and HAProxy "
                 f"(orange), {r.get('seconds', '?')} s per measurement; medians of "
                 f"{r.get('rounds', 1)} rounds, whiskers min-max", fontsize=11)
    return _save(fig, out / "proxy-path.png")


def redirect_cost(r: dict[str, Any], out: Path) -> Path:
    rows = r["rows"]
    names = list(rows)
    p50 = [rows[n]["connect_p50_us"] for n in names]
    p99 = [rows[n]["connect_p99_us"] for n in names]
    colours = ["#7f7f7f" if n == "baseline" else "#2ca02c" if n == "ebpf" else MESHNODE
               for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _bars(axes[0], names, p50, colours, "{:.1f}")
    axes[0].set_title("connect() p50 per backend (µs, lower is better)", fontsize=10)
    axes[0].set_ylabel("µs")
    _bars(axes[1], names, p99, colours, "{:.0f}")
    axes[1].set_yscale("log")
    axes[1].set_title("connect() p99 per backend (µs, log scale)", fontsize=10)
    fig.suptitle(f"The cost of redirection itself: {r.get('connects', '?')} sequential "
                 "connect() to a plain listener on 15001; baseline = nothing installed",
                 fontsize=10)
    return _save(fig, out / "redirect-cost.png")


def redirect_apply(r: dict[str, Any], out: Path) -> Path:
    rows = r["rows"]
    names = [x["backend"] for x in rows]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = range(len(rows))
    w = 0.2
    series = [("apply_p50", "apply p50", MESHNODE, 1.0), ("apply_p99", "apply p99", MESHNODE,
                                                           0.45),
              ("remove_p50", "remove p50", "#9467bd", 1.0),
              ("remove_p99", "remove p99", "#9467bd", 0.45)]
    for j, (key, label, colour, alpha) in enumerate(series):
        ax.bar([i + (j - 1.5) * w for i in x], [row[key] for row in rows], width=w,
               color=colour, alpha=alpha, label=label)
    ax.set_xticks(list(x), names, fontsize=9)
    ax.set_ylabel("ms (lower is better)")
    ax.set_title(f"Redirect apply/remove per pod ({r.get('pods', '?')} fresh namespaces "
                 "per backend)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, out / "redirect-apply.png")


def mesh_path(r: dict[str, Any], out: Path) -> Path:
    rows = r["path"]["rows"]
    names = {"direct": "direct\n(pod a → pod b)",
             "mesh_hbone": "mesh, nftables capture:\na → VIP → proxy →\nHBONE mTLS → proxy → b",
             "mesh_hbone_ebpf": "mesh, eBPF capture:\nthe same path"}
    keys = [k for k in names if k in rows]
    labels = [names[k] for k in keys]
    colours = ["#7f7f7f" if k == "direct" else MESHNODE for k in keys]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = range(len(keys))
    p50 = [rows[k]["p50_us"] for k in keys]
    p99 = [rows[k]["p99_us"] for k in keys]
    axes[0].bar([i - 0.2 for i in x], p50, width=0.4, color=colours)
    axes[0].bar([i + 0.2 for i in x], p99, width=0.4, color=colours, alpha=0.45)
    for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
        axes[0].annotate(f"{a:.0f}", (i - 0.2, a), ha="center", va="bottom", fontsize=7)
        axes[0].annotate(f"{b:.0f}", (i + 0.2, b), ha="center", va="bottom", fontsize=7)
    axes[0].set_xticks(list(x), labels, fontsize=8)
    axes[0].set_title("Round trip (µs; solid p50, light p99)", fontsize=10)
    axes[0].grid(axis="y", alpha=0.3)
    if all("conn_s" in rows[k] for k in keys):
        _bars(axes[1], labels, [rows[k]["conn_s"] for k in keys], colours, "{:.0f}",
              _spread(rows, keys, "conn_s"))
    axes[1].set_title("Connection rate (connect, echo, close; 8 clients)", fontsize=10)
    _bars(axes[2], labels, [rows[k]["gbps"] for k in keys], colours, "{:.2f}",
          _spread(rows, keys, "gbps"))
    axes[2].set_title("Throughput, one stream (Gbit/s)", fontsize=10)
    fig.suptitle(f"The mesh path: two hops with mTLS; medians of {r['path'].get('rounds', 1)} "
                 "rounds, whiskers min-max", fontsize=11)
    return _save(fig, out / "mesh-path.png")


PLOTS = (("proxy", proxy_path), ("redirect_cost", redirect_cost),
         ("redirect", redirect_apply), ("mesh", mesh_path))


def render(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw one PNG per benchmark present in `results`; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fn(results[key], out_dir) for key, fn in PLOTS if results.get(key)]


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results" / "latest.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else here.parent / "docs" / "img"
    for p in render(json.loads(src.read_text()), dst):
        print(p)
