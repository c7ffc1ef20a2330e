"""``--plot out.png``: one row per configuration - latency distribution (left) and throughput (right)."""

from __future__ import annotations

from pathlib import Path

from edgedl._lazy import require
from edgedl.stages.bench.report import BenchReport, engine_label

_COLORS = {"torch": "#d95f02", "ort": "#1b9e77", "fallback": "#e7298a"}


def _color(result: dict) -> str:
    if result.get("fallback"):
        return _COLORS["fallback"]
    return _COLORS["torch"] if result["engine"] == "torch" else _COLORS["ort"]


def plot_report(report: BenchReport, path: str | Path) -> Path:
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    labels = [f"{r['model_name']} · {engine_label(r)} · t{r['threads']} b{r['batch']}" for r in results]
    n = len(results)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.38 * n), sharey=True,
                                        gridspec_kw={"width_ratios": [3, 2]})
    for y, r in enumerate(results):
        q = r.get("latency_quantiles_ms") or []
        lat = r["latency_ms"]
        c = _color(r)
        if len(q) == 101:
            ax_lat.hlines(y, q[1], q[99], color=c, linewidth=1.2, alpha=0.7)  # p1..p99
            ax_lat.hlines(y, q[10], q[90], color=c, linewidth=7, alpha=0.45)  # p10..p90
        ax_lat.plot([lat["p50_ms"]], [y], "o", color=c, markersize=6, markeredgecolor="black", markeredgewidth=0.6)
        ax_lat.plot([lat["p99_ms"]], [y], "|", color="black", markersize=11)
        ax_lat.annotate(f"{lat['p50_ms'] * 1000:.0f} µs" if lat["p50_ms"] < 1 else f"{lat['p50_ms']:.2f} ms",
                        (lat["p50_ms"], y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
        tp = r["throughput"]["samples_per_s"]
        ax_tp.barh(y, tp, color=c, alpha=0.85)
        ax_tp.annotate(f"{tp:,.0f}", (tp, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax_lat.set_xscale("log")
    ax_lat.set_yticks(range(n), labels, fontsize=8)
    ax_lat.invert_yaxis()
    ax_lat.set_xlabel("latency per query, ms (log)  —  dot p50, thick p10–p90, thin p1–p99, | p99")
    ax_lat.grid(axis="x", which="both", alpha=0.25)
    ax_tp.set_xscale("log")
    ax_tp.set_xlabel("throughput, samples/s (log)")
    ax_tp.grid(axis="x", which="both", alpha=0.25)
    handles = [plt.Line2D([], [], color=_COLORS[k], linewidth=6, label=name)
               for k, name in (("ort", "onnxruntime"), ("torch", "PyTorch eager"), ("fallback", "provider fell back"))
               if any(_color(r) == _COLORS[k] for r in results)]
    ax_tp.legend(handles=handles, loc="lower right", fontsize=8)
    env = report.environment.get("cpu", {}) if report.environment else {}
    fig.suptitle(f"edgedl bench — {report.config.get('scenario', 'single-stream')} — "
                 f"{env.get('model', '?')}, {env.get('usable_cores', '?')} cores", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
