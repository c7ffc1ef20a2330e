from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option


@click.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .onnx file.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Weights from `edgedl train` (file or its --out dir).")
@click.option("--input", "inputs", multiple=True, metavar="NAME=DIMS[:DTYPE]",
              help="For file.py:Class models: one per forward() argument, e.g. x=2x3x32x32.")
@click.option("--dynamic", multiple=True, metavar="NAME=AXIS:label,...",
              help="Dynamic axes of an input or output, e.g. x=0:batch,2:seq.")
@click.option("--output-name", "output_names", multiple=True, metavar="NAME",
              help="Names of a file.py:Class model's outputs, in order.")
@click.option("--opset", type=int, help="ONNX opset (default: newest both torch and onnxruntime support).")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Simplify with onnxslim.")
@click.option("--optimize", is_flag=True, help="Save onnxruntime's (portable, basic-level) optimized graph.")
@json_option
@debug_option
def export(model, output, checkpoint, inputs, dynamic, output_names, opset, simplify, optimize, as_json, debug):
    """Export MODEL to ONNX and validate it against PyTorch.

    MODEL is a recipe (models/cnn.py, or a zoo name such as cnn) or path/to/file.py:ClassName.
    """
    from edgedl.stages.export import ExportConfig, export as run_export, resolve_source

    recipe = resolve_source(model, list(inputs), list(dynamic), list(output_names))
    result = run_export(recipe, ExportConfig(output=output, checkpoint=checkpoint, opset=opset, simplify=simplify,
                                             optimize=optimize, debug=debug))
    if as_json:
        emit_json(result.to_json())
        return
    v = result.validation
    click.echo(f"exported {result.recipe} -> {result.onnx_path} ({result.size_bytes / 1024:.1f} KiB, opset {result.opset})")
    for check in v.checks:
        sizes = ", ".join(f"{k}={n}" for k, n in check["sizes"].items()) or "fixed shapes"
        diffs = ", ".join(f"{name} {o['shape']} max abs diff {o['max_abs_diff']:.2g}" for name, o in check["outputs"].items())
        click.echo(f"  validated at {sizes}: {diffs}")
    click.echo(f"faithful: onnxruntime matches PyTorch (max abs diff {v.max_abs_diff:.2g})")
