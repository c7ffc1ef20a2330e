"""The Pareto front as a PNG: speed against accuracy (left) and against size (right); every candidate timed in
the search in grey (its longest timing), the re-measured finalists in colour, the front joined, the choice
starred."""

from __future__ import annotations

from pathlib import Path

from edgedl._lazy import require

COLORS = {"fp32": "#666666", "dynamic": "#1b9e77", "static": "#d95f02", "fp16": "#7570b3"}


def plot_front(report, path: Path) -> Path:
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = report.throughput
    speed_label = "samples/s (higher is better)" if throughput else "median latency per query, ms (lower is better)"

    def speed_of_trial(t):
        return t.timing.samples_per_s if throughput else t.timing.p50_ms

    def speed(m):
        return m.samples_per_s if throughput else m.p50_ms

    timed = [t for t in report.trials if t.timing is not None and t.artifact is not None and not t.artifact.error]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, ylabel, y_trial, y_member in (
            (axes[0], report.accuracy_basis, lambda t: t.loss, lambda m: m.loss),
            (axes[1], "model file size, KiB", lambda t: t.artifact.size_bytes / 1024, lambda m: m.size / 1024)):
        ax.scatter([speed_of_trial(t) for t in timed], [y_trial(t) for t in timed], s=12, color="#cccccc",
                   label="searched (short timings)", zorder=1)
        for m in report.finalists:
            ax.scatter([speed(m)], [y_member(m)], s=40, color=COLORS.get(m.candidate.precision, "#333333"), zorder=3)
        front = sorted(report.pareto, key=speed)
        ax.plot([speed(m) for m in front], [y_member(m) for m in front], color="#1f78b4", lw=1, zorder=2,
                label="re-measured front")
        c = report.chosen
        ax.scatter([speed(c)], [y_member(c)], marker="*", s=260, color="#e31a1c", zorder=4,
                   label=f"chosen: {c.candidate.describe()}")
        ax.set_xscale("log")
        ax.set_xlabel(speed_label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for precision, color in COLORS.items():
        if any(m.candidate.precision == precision for m in report.finalists):
            axes[1].scatter([], [], s=40, color=color, label=f"finalist: {precision}")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{Path(report.model).name} on {report.target} ({report.device}), objective {report.objective}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

