from __future__ import annotations

import json
from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option
@debug_option
def inspect(model: Path, as_json: bool, debug: bool) -> None:
    """Show MODEL's inputs/outputs (dynamic dims by name), opset, op types, parameters and edgedl metadata."""
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console
    from edgedl.stages.inspect import inspect_model

    info = inspect_model(model)
    if as_json:
        emit_json(info)
        return
    console = out_console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    console.print(f"[bold]{escape(info['path'])}[/]  {info['size_bytes'] / 1024:.1f} KiB, IR {info['ir_version']}, opset {opsets}, "
                  f"{info['parameters']:,} parameters, {info['nodes']} nodes, producer {info['producer'] or '?'}",
                  soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            table.add_row(kind[:-1], escape(t["name"]), t["dtype"], escape("[" + ", ".join(map(str, t["shape"])) + "]"))
    console.print(table)
    console.print("ops: " + ", ".join(f"{op}×{n}" for op, n in info["op_types"].items()))
    for key, value in info["edgedl"].items():
        text = value if isinstance(value, str) else json.dumps(value)
        console.print(escape(f"edgedl.{key}: {text if len(text) < 160 else text[:157] + '...'}"), soft_wrap=True)
    for key, value in info["metadata_props"].items():
        console.print(escape(f"{key}: {value[:160]}"), soft_wrap=True)
