from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._shapes import shape_options


@click.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .onnx file.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Weights: an `edgedl train` --out dir, a .safetensors file or a torch.save'd state_dict.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=DIMS[:DTYPE][:LO..HI]",
              help="For file.py:Class and TorchScript models: one per forward() argument, in order, e.g. "
                   "x=2x3x32x32, ids=2x16:int64:0..30521, sr=scalar:int64:16000..16000.")
@click.option("--dynamic", multiple=True, metavar="NAME=AXIS:label,...",
              help="Dynamic axes of an input or output, e.g. x=0:batch,2:seq (a dim named 'batch' is the batch axis).")
@click.option("--output-name", "output_names", multiple=True, metavar="NAME",
              help="Names of a file.py:Class model's outputs, in order.")
@click.option("--init-args", metavar="JSON",
              help="""Constructor arguments of a file.py:Class model: '{"width": 64}' or '[64, 10]'.""")
@shape_options
@click.option("--exporter", default="auto", show_default=True, type=click.Choice(["auto", "dynamo", "torchscript"]),
              help="torch's exporter; auto takes dynamo and falls back to TorchScript when dynamo fails.")
@click.option("--strict", is_flag=True, help="Fail on warnings: outputs too weak to validate, tracer warnings.")
@click.option("--opset", type=int, help="ONNX opset (default: newest both the exporter and onnxruntime support).")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Simplify with onnxslim.")
@click.option("--optimize", is_flag=True, help="Save onnxruntime's (portable, basic-level) optimized graph.")
@json_option
@debug_option
def export(model, output, checkpoint, inputs, dynamic, output_names, init_args, shape_options, exporter, strict,
           opset, simplify, optimize, as_json, debug):
    """Export MODEL to ONNX and validate it against PyTorch.

    MODEL is a recipe (models/cnn.py, or a zoo name such as cnn), path/to/file.py:ClassName, or a TorchScript
    file (model.jit, or model.jit:submodule). --shape / --input-shape set the example sizes export traces at
    (each dynamic dim is also validated at a second size); --batch-axis and --input-range are stored in the model.
    """
    from edgedl.stages.export import ExportConfig, export as run_export
    from edgedl.stages.export_source import resolve_source

    source = resolve_source(model, list(inputs), list(dynamic), list(output_names), shape_options, init_args,
                            checkpoint)
    config = ExportConfig(output=output, checkpoint=checkpoint, opset=opset, exporter=exporter, strict=strict,
                          simplify=simplify, optimize=optimize, debug=debug)
    result = run_export(source, config, notice=lambda line: click.echo(f"notice: {line}", err=True))
    if as_json:
        emit_json(result.to_json())
        return
    v = result.validation
    via = f"{result.exporter} exporter" + (" (dynamo failed)" if result.fallback_reason else "")
    click.echo(f"exported {result.recipe} -> {result.onnx_path} ({result.size_bytes / 1024:.1f} KiB, opset "
               f"{result.opset}, {via})")
    for check in v.checks:
        sizes = ", ".join(f"{k}={n}" for k, n in check["sizes"].items()) or "fixed shapes"
        diffs = ", ".join(f"{name} {o['shape']} max abs diff {o['max_abs_diff']:.2g} (rel {o['rel_diff']:.2g})"
                          for name, o in check["outputs"].items())
        click.echo(f"  validated at {sizes}: {diffs}")
    p = result.provenance
    if p.nodes:
        click.echo(f"  source mapping kept for {p.mapped} of {p.nodes} nodes ({p.size_bytes / 1024:.1f} KiB)")
    if v.degenerate:
        click.echo(f"matches PyTorch (max abs diff {v.max_abs_diff:.2g}, rel {v.max_rel_diff:.2g}), but the check "
                   f"is weak for {', '.join(v.degenerate)} (see the notices)")
    else:
        click.echo(f"faithful: onnxruntime matches PyTorch (max abs diff {v.max_abs_diff:.2g}, rel "
                   f"{v.max_rel_diff:.2g})")
