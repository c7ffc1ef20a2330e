"""Reports a person looks at: one self-contained HTML file (inline CSS and SVG, no scripts) or a PNG chart
(matplotlib, the ``plot`` extra) of the time per operator, float vs int8. ``CSS`` and ``write`` serve every
debug report (``layers_report`` draws compare's)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.stages.debug.speed import OperatorRow, SpeedReport
from edgedl.stages.files import atomic_output

FLOAT_COLOR, INT8_COLOR, QDQ_COLOR = "#4c78a8", "#f58518", "#e45756"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
.verdict{font-size:16px;font-weight:600} .slower{color:#c62828} .faster{color:#2e7d32} .same{color:#8d6e00}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 9px;border-bottom:1px solid #e3e3e3;text-align:left} td.n,th.n{text-align:right}
tr.lose td{background:#fdecea} tr.total td{font-weight:600;border-top:2px solid #999}
code{background:#f4f4f4;padding:2px 5px;border-radius:3px;font-size:12.5px;word-break:break-all}
.muted{color:#666} li{margin:5px 0} svg text{font:12px system-ui,sans-serif}
"""


def _label(row: OperatorRow) -> str:
    return row.node or "(added by onnxruntime)"


def _svg(report: SpeedReport) -> str:
    """Two bars per operator, float and int8 (its Q/DQ part in red), on one linear scale."""
    rows = [r for r in report.rows if r.float_us > 0 or r.int8_us > 0]
    label_w, bar_w, row_h, top = 260, 600, 34, 28
    peak = max([max(r.float_us, r.int8_us) for r in rows] + [1e-9])
    height = top + row_h * len(rows) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 110}" height="{height}" '
           f'role="img" aria-label="time per operator, float vs int8">',
           f'<rect x="{label_w}" y="6" width="12" height="10" fill="{FLOAT_COLOR}"/>'
           f'<text x="{label_w + 16}" y="15">float</text>'
           f'<rect x="{label_w + 70}" y="6" width="12" height="10" fill="{INT8_COLOR}"/>'
           f'<text x="{label_w + 86}" y="15">int8</text>'
           f'<rect x="{label_w + 130}" y="6" width="12" height="10" fill="{QDQ_COLOR}"/>'
           f'<text x="{label_w + 146}" y="15">of it quantize/dequantize</text>']
    for i, r in enumerate(rows):
        y = top + i * row_h
        name = _label(r)
        short = name if len(name) <= 32 else name[:30] + "…"
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end"><title>{escape(name)}</title>'
                   f'{escape(short)} <tspan fill="#888">{escape(r.op_type)}</tspan></text>')
        for j, (us, color, kernels) in enumerate(((r.float_us, FLOAT_COLOR, r.float_kernels),
                                                   (r.int8_us, INT8_COLOR, r.int8_kernels))):
            w = bar_w * us / peak
            yy = y + 2 + j * 14
            if not kernels:  # fused into another operator's kernel, or not in this model
                out.append(f'<text x="{label_w + 5}" y="{yy + 10}" fill="#888">no kernel</text>')
                continue
            out.append(f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="12" fill="{color}"/>')
            if j == 1 and r.qdq_us > 0:
                out.append(f'<rect x="{label_w + bar_w * (us - r.qdq_us) / peak:.1f}" y="{yy}" '
                           f'width="{bar_w * r.qdq_us / peak:.1f}" height="12" fill="{QDQ_COLOR}"/>')
            out.append(f'<text x="{label_w + w + 5:.1f}" y="{yy + 10}">{us:,.1f} µs</text>')
    out.append("</svg>")
    return "".join(out)


def _kernel_table(title: str, speed) -> str:
    rows = "".join(
        f"<tr><td>{escape(k.node)}</td><td>{escape(k.op_type)}</td><td>{escape(k.signature)}</td>"
        f"<td>{escape(k.category)}</td><td>{escape(k.origin or '-')}</td><td class=n>{k.raw_us:,.2f}</td>"
        f"<td class=n>{k.us:,.2f}</td></tr>" for k in speed.kernels)
    return (f"<details><summary>{escape(title)}: {len(speed.kernels)} kernels</summary><table><tr><th>kernel</th>"
            "<th>op</th><th>types</th><th>kind</th><th>operator</th><th class=n>profiled µs</th>"
            f"<th class=n>µs</th></tr>{rows}</table></details>")


def html_report(report: SpeedReport) -> str:
    f, q = report.float.times, report.int8.times
    first, *rest = report.explanation()
    losers = {r.node for r in report.losers[:3]} if report.verdict != "faster" else set()
    body = []
    for r in report.rows:
        cls = ' class="lose"' if r.node in losers and r.delta_us > 0 else ""
        body.append(f"<tr{cls}><td>{escape(_label(r))}</td><td>{escape(r.op_type)}</td>"
                    f"<td>{escape(r.describe(r.float_kernels))}</td><td class=n>{r.float_us:,.1f}</td>"
                    f"<td>{escape(r.describe(r.int8_kernels))}</td><td class=n>{r.int8_us:,.1f}</td>"
                    f"<td class=n>{r.qdq_us:,.1f}</td><td class=n>{r.delta_us:+,.1f}</td></tr>")
    for label, fv, qv in (("operators", f.ops_us, q.ops_us), ("onnxruntime executor", f.executor_us, q.executor_us),
                          ("predicted", f.predicted_us, q.predicted_us),
                          ("measured (median)", f.measured_us, q.measured_us)):
        body.append(f'<tr class="total"><td>{label}</td><td></td><td></td><td class=n>{fv:,.1f}</td><td></td>'
                    f"<td class=n>{qv:,.1f}</td><td></td><td class=n>{qv - fv:+,.1f}</td></tr>")
    advice = "".join(f"<li>{escape(a.text)}" + (f"<br><code>{escape(a.command_line())}</code>" if a.command else "")
                     + "</li>" for a in report.advice)
    verdict_class = {"faster": "faster", "slower": "slower"}.get(report.verdict, "same")
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.shapes.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgedl debug speed: {escape(report.int8.path.name)}</title>
<style>{CSS}</style></head><body>
<h1>{escape(report.float.path.name)} (float) vs {escape(report.int8.path.name)} (int8)</h1>
<div class="muted">batch {report.batch} ({escape(shapes)}), {report.threads} thread(s), {escape(report.provider)};
{escape(report.cpu.describe())}</div>
<p class="verdict {verdict_class}">{escape(first)}</p>
{"".join(f"<p>{escape(line)}</p>" for line in rest)}
<h2>Time per operator</h2>
{_svg(report)}
<table><tr><th>operator</th><th>op</th><th>float kernel</th><th class=n>float µs</th><th>int8 kernel</th>
<th class=n>int8 µs</th><th class=n>of it Q/DQ</th><th class=n>int8 − float</th></tr>
{"".join(body)}</table>
<p class="muted">Operator times: median per run from onnxruntime's profiler, less the profiler's own cost
({report.profiler.kernel_us:.2f} µs per kernel + {report.profiler.kernel_per_input_us:.2f} µs per further input,
measured beside the models). Check, operators + executor vs measured median: float {f.agreement:+.1%},
int8 {q.agreement:+.1%}; {f.runs}/{q.runs} profiled runs, {f.samples}/{q.samples} timed runs
(runs that lost the CPU to other work left out: float {f.off_cpu_share:.0%}, int8 {q.off_cpu_share:.0%}).</p>
<h2>Advice</h2><ol>{advice}</ol>
<h2>Kernels</h2>
{_kernel_table("float", report.float)}
{_kernel_table("int8", report.int8)}
</body></html>
"""


def png_report(report: SpeedReport, path: Path) -> None:
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.float_us > 0 or r.int8_us > 0][::-1]
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.42 * len(rows)))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r.float_us for r in rows], height=0.38, color=FLOAT_COLOR, label="float")
    ax.barh([y - 0.2 for y in ys], [r.int8_us for r in rows], height=0.38, color=INT8_COLOR, label="int8")
    ax.barh([y - 0.2 for y in ys], [r.qdq_us for r in rows], left=[r.int8_us - r.qdq_us for r in rows], height=0.38,
            color=QDQ_COLOR, label="of it quantize/dequantize")
    ax.set_yticks(list(ys), [f"{_label(r)} ({r.op_type})" for r in rows], fontsize=9)
    ax.set_xlabel("µs per run (median)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(report.explanation()[0], 110)), fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write(path: str | Path, html: Callable[[], str], png: Callable[[Path], None]) -> Path:
    """Write a report atomically: ``html()``'s text for .html/.htm, ``png(tmp)`` for .png."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise EdgeDLError(f"report {path}: use a .html or .png file name")
    with atomic_output(path) as tmp:
        if suffix == ".png":
            png(tmp)
        else:
            tmp.write_text(html(), encoding="utf-8")
    return path


def write_report(report: SpeedReport, path: str | Path) -> Path:
    return write(path, lambda: html_report(report), lambda tmp: png_report(report, tmp))
