from __future__ import annotations

import json
from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._shapes import shape_options


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@shape_options
@json_option
@debug_option
def inspect(model: Path, shape_options, as_json: bool, debug: bool) -> None:
    """Show MODEL's inputs/outputs (dynamic dims by name), opset, op types, parameters and edgedl metadata, and
    how bench, quantize and serve will run it: each input's batch axis and the shape it runs at."""
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console
    from edgedl.stages.inspect import inspect_model

    info = inspect_model(model, shape_options)
    if as_json:
        emit_json(info)
        return
    console = out_console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    console.print(f"[bold]{escape(info['path'])}[/]  {info['size_bytes'] / 1024:.1f} KiB, IR {info['ir_version']}, opset {opsets}, "
                  f"{info['parameters']:,} parameters, {info['nodes']} nodes, producer {info['producer'] or '?'}",
                  soft_wrap=True)
    sig = info["signature"]
    axes = {t["name"]: t for t in sig.get("inputs", []) + sig.get("outputs", [])}
    table = Table(show_edge=False, pad_edge=False)
    for col in ("", "name", "dtype", "shape", "batch axis", "runs at"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            s = axes.get(t["name"], {})
            # an input without a batch axis is not batched; an output's may just be unknown (never guessed)
            axis = "-" if not s else (str(s["batch_axis"]) if s["batch_axis"] is not None
                                      else ("none" if kind == "inputs" else "?"))
            runs = s.get("runs_at")
            table.add_row(kind[:-1], escape(t["name"]), t["dtype"], escape("[" + ", ".join(map(str, t["shape"])) + "]"),
                          axis, "" if runs is None else escape("[" + ", ".join(map(str, runs)) + "]"))
    console.print(table)
    if "error" in sig:
        console.print(escape(f"onnxruntime: {sig['error']}"), soft_wrap=True)
    else:
        batching = "can be batched by the server" if sig["batchable"] else "is never batched by the server"
        origin = f"sizes from {', '.join(sig['sizes_from'])}" if sig["sizes_from"] else "no sizes known beyond the model's own"
        console.print(f"runs: {batching}; {origin}")
        if sig["missing"]:
            from edgedl.cli._errors import describe
            from edgedl.errors import EdgeDLError

            m = sig["missing"]
            exc = EdgeDLError(m["message"], hint=m["hint"], option=tuple(m["option"]) if m["option"] else None)
            console.print(escape(f"sizes: {describe(exc)}"), soft_wrap=True)
    console.print("ops: " + ", ".join(f"{op}×{n}" for op, n in info["op_types"].items()))
    for key, value in info["edgedl"].items():
        text = value if isinstance(value, str) else json.dumps(value)
        console.print(escape(f"edgedl.{key}: {text if len(text) < 160 else text[:157] + '...'}"), soft_wrap=True)
    for key, value in info["metadata_props"].items():
        console.print(escape(f"{key}: {value[:160]}"), soft_wrap=True)
