"""``edgedl debug compare --report``: the error of every compared tensor along the graph (SQNR per tensor in
topological order, the tolerance as a line, the first divergence marked), as one self-contained HTML file (inline
SVG, no scripts) or a PNG chart, in the style of ``debug speed``'s report."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from edgedl._lazy import require
from edgedl.stages.layerwise.compare import CompareReport, LayerError
from edgedl.stages.debug.report import CSS, FLOAT_COLOR, QDQ_COLOR, write

CAP_DB = 140.0  # an exact tensor (inf dB) is drawn at the top of the scale
_EXTRA_CSS = "tr.div td{background:#fdecea} tr.first td{background:#f8c9c4;font-weight:600}"


def _shown(db: float) -> float:
    return CAP_DB if not math.isfinite(db) else max(min(db, CAP_DB), -20.0)


def _fmt_db(db: float) -> str:
    return "exact" if not math.isfinite(db) else f"{db:.1f}"


def _short(source: str | None) -> str:
    return source.rsplit("/", 1)[-1] if source else "-"


def _svg(report: CompareReport) -> str:
    layers = report.layers
    if not layers:
        return "<p>no tensor could be compared</p>"
    left, top, height, step = 48, 20, 260, max(6, min(28, 900 // max(len(layers), 1)))
    width = left + step * len(layers) + 20
    lo = min(-20.0, min(_shown(x.sqnr_db) for x in layers))
    span = CAP_DB - lo

    def y(db: float) -> float:
        return top + height * (CAP_DB - _shown(db)) / span

    first = report.first_divergence
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 40}" role="img" '
           f'aria-label="SQNR per tensor along the graph">']
    for db in range(int(math.ceil(lo / 20.0) * 20), int(CAP_DB) + 1, 20):
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(db):.1f}" y2="{y(db):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y(db) + 4:.1f}" text-anchor="end" fill="#888">{db}</text>')
    tol = report.tolerance.min_sqnr_db
    out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tol):.1f}" y2="{y(tol):.1f}" stroke="{QDQ_COLOR}" '
               f'stroke-dasharray="5,4"/><text x="{width - 12}" y="{y(tol) - 4:.1f}" text-anchor="end" '
               f'fill="{QDQ_COLOR}">tolerance {tol:g} dB</text>')
    for i, layer in enumerate(layers):
        x = left + i * step
        color = QDQ_COLOR if layer.divergent else FLOAT_COLOR
        bar_top = y(layer.sqnr_db)
        tip = (f"#{layer.index} {layer.node} ({layer.op_type}) {layer.module or ''} {_short(layer.source)}: "
               f"SQNR {_fmt_db(layer.sqnr_db)} dB")
        out.append(f'<rect x="{x + 1}" y="{bar_top:.1f}" width="{max(step - 2, 2)}" '
                   f'height="{max(top + height - bar_top, 1):.1f}" fill="{color}"><title>{escape(tip)}</title></rect>')
        if layer is first:
            out.append(f'<text x="{x + step / 2:.1f}" y="{top + height + 16}" text-anchor="middle" '
                       f'fill="{QDQ_COLOR}" font-weight="bold">▲ first divergence: {escape(layer.node)}</text>')
    out.append(f'<text x="{left}" y="{top - 6}" fill="#666">SQNR dB (higher is closer), tensors in graph order</text>')
    out.append("</svg>")
    return "".join(out)


def _row(layer: LayerError, first: LayerError | None) -> str:
    cls = ' class="first"' if layer is first else (' class="div"' if layer.divergent else "")
    other = escape(f"{layer.other_node} ({layer.other_op_type})") if layer.other_node else "-"
    return (f"<tr{cls}><td class=n>{layer.index}</td><td>{escape(layer.tensor)}</td><td>{escape(layer.node)}</td>"
            f"<td>{escape(layer.op_type)}</td><td>{other}</td><td>{escape(layer.module or '-')}</td>"
            f"<td>{escape(_short(layer.source))}</td><td class=n>{_fmt_db(layer.sqnr_db)}</td>"
            f"<td class=n>{layer.cosine:.5f}</td><td class=n>{layer.max_abs:.3g}</td>"
            f"<td class=n>{layer.relative:.3g}</td><td class=n>{layer.added:+.3g}</td></tr>")


def html_report(report: CompareReport) -> str:
    first = report.first_divergence
    tol = report.tolerance
    if first is None:
        verdict = '<p class="verdict faster">no tensor diverges</p>'
    else:
        verdict = (f'<p class="verdict slower">first divergence: {escape(first.node)} ({escape(first.op_type)}), '
                   f"tensor {escape(first.tensor)}, {escape(first.where())}: SQNR {_fmt_db(first.sqnr_db)} dB, "
                   f"max abs {first.max_abs:.3g}; {report.divergent} tensor(s) diverge</p>")
        if first.worst_samples:
            verdict += "<p>diverges most on samples " + ", ".join(
                f"#{i} ({r:.3g})" for i, r in first.worst_samples) + "</p>"
    rows = "".join(_row(layer, first) for layer in report.layers)
    outputs = "".join(f"<li>{escape(o.tensor)}: SQNR {_fmt_db(o.sqnr_db)} dB, cosine {o.cosine:.6f}, max abs "
                      f"{o.max_abs:.3g}</li>" for o in report.outputs)
    samples = "".join(f"<li>#{s.sample}{f' (label {escape(str(s.label))})' if s.label is not None else ''}: "
                      f"{s.relative:.3g}</li>" for s in report.samples_worst)
    weights = "".join(f"<tr><td>{escape(w.weight)}</td><td>{escape(w.node)}</td><td class=n>{_fmt_db(w.sqnr_db)}</td>"
                      f"<td class=n>{w.max_abs:.3g}</td></tr>" for w in report.weights)
    notes = "".join(f"<li>{escape(n)}</li>" for n in (*report.unmapped, *report.notes))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgedl debug compare</title>
<style>{CSS}{_EXTRA_CSS}</style></head><body>
<h1>{escape(report.reference.label)} vs {escape(report.candidate.label)}</h1>
<div class="muted">reference {escape(report.reference.precision)}, candidate {escape(report.candidate.precision)};
{report.samples} sample(s) of {escape(str(report.data.get("source", "?")))}; {len(report.layers)} tensors compared;
diverges below SQNR {tol.min_sqnr_db:g} dB with max abs diff above {tol.atol:g}</div>
{verdict}
<h2>Error per tensor along the graph</h2>
{_svg(report)}
<h2>Outputs</h2><ul>{outputs or "<li>-</li>"}</ul>
<h2>Samples that diverge most</h2><ul>{samples or "<li>-</li>"}</ul>
<h2>Tensors</h2>
<table><tr><th class=n>#</th><th>tensor</th><th>node</th><th>op</th><th>computed by</th><th>module</th><th>source</th>
<th class=n>SQNR dB</th><th class=n>cosine</th><th class=n>max abs</th><th class=n>relative</th>
<th class=n>added</th></tr>{rows}</table>
{f"<h2>Quantized weights</h2><table><tr><th>weight</th><th>node</th><th class=n>SQNR dB</th><th class=n>max abs</th></tr>{weights}</table>" if weights else ""}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def png_report(report: CompareReport, path: Path) -> None:
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report.layers
    fig, ax = plt.subplots(figsize=(max(8.0, min(0.25 * len(layers), 30.0)), 4.5))
    xs = range(len(layers))
    colors = [QDQ_COLOR if x.divergent else FLOAT_COLOR for x in layers]
    ax.bar(list(xs), [_shown(x.sqnr_db) for x in layers], color=colors)
    ax.axhline(report.tolerance.min_sqnr_db, color=QDQ_COLOR, linestyle="--",
               label=f"tolerance {report.tolerance.min_sqnr_db:g} dB")
    first = report.first_divergence
    if first is not None:
        i = layers.index(first)
        ax.annotate(f"first divergence\n{first.node} ({first.op_type})\n{_short(first.source)}",
                    (i, _shown(first.sqnr_db)), xytext=(i, CAP_DB * 0.8), ha="center", fontsize=8,
                    color=QDQ_COLOR, arrowprops={"arrowstyle": "->", "color": QDQ_COLOR},
                    bbox={"boxstyle": "round", "fc": "white", "ec": QDQ_COLOR})
    ax.set_xticks(list(xs), [x.node for x in layers], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR dB (exact drawn at the top)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(f"{report.reference.label} vs {report.candidate.label}", 110)), fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_layers_report(report: CompareReport, path: str | Path) -> Path:
    return write(path, lambda: html_report(report), lambda tmp: png_report(report, tmp))
