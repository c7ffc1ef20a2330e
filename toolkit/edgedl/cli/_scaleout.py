"""`edgedl package --format triton|kserve`: the options and the dispatch, kept apart from the bundle command so that
`cli/package.py` only gains one decorator and one call."""

from __future__ import annotations

import functools
from pathlib import Path

import click

FORMATS = ("bundle", "triton", "kserve")

_OPTIONS = [
    click.option("--format", "fmt", type=click.Choice(FORMATS), default="bundle", show_default=True,
                 help="bundle: a device bundle (--target); triton: a Triton model repository; kserve: a Triton "
                      "repository + KServe InferenceService manifest."),
    click.option("--max-batch-size", type=int, default=8, show_default=True,
                 help="[triton/kserve] Triton max_batch_size when the model has a dynamic batch axis (0: no batching)."),
    click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
                 help="[triton/kserve] dynamic_batching max_queue_delay_microseconds."),
    click.option("--no-dynamic-batching", is_flag=True, help="[triton/kserve] Leave out the dynamic_batching block."),
    click.option("--instances", type=int, default=1, show_default=True, help="[triton/kserve] instance_group count."),
    click.option("--instance-kind", type=click.Choice(["cpu", "gpu", "auto"]), default=None,
                 help="[triton/kserve] instance_group kind (default: cpu; gpu for kserve with --gpus)."),
    click.option("--storage-uri", default=None, help="[kserve] Where the repository will be uploaded (s3://, gs://, pvc:// ...)."),
    click.option("--service-name", default=None, help="[kserve] InferenceService name (default: the first model's name)."),
    click.option("--namespace", default=None, help="[kserve] Kubernetes namespace."),
    click.option("--cpu", default="1", show_default=True, help="[kserve] CPU request/limit per replica."),
    click.option("--memory", default="2Gi", show_default=True, help="[kserve] Memory request/limit per replica."),
    click.option("--gpus", type=int, default=0, show_default=True, help="[kserve] nvidia.com/gpu per replica."),
    click.option("--min-replicas", type=int, default=1, show_default=True, help="[kserve] Minimum replicas."),
    click.option("--max-replicas", type=int, default=1, show_default=True, help="[kserve] Maximum replicas."),
]
_KEYS = ("fmt", "max_batch_size", "max_queue_delay_us", "no_dynamic_batching", "instances", "instance_kind",
         "storage_uri", "service_name", "namespace", "cpu", "memory", "gpus", "min_replicas", "max_replicas")


def scaleout_options(command):
    """Add the --format options to a click command; when --format is triton or kserve, run the scale-out export
    instead of the command (which keeps its own behaviour for --format bundle)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        scale = {k: kwargs.pop(k) for k in _KEYS}
        if scale["fmt"] == "bundle":
            if not kwargs.get("target"):
                raise click.UsageError("--target is required for a device bundle (or pass --format triton|kserve)")
            return command(*args, **kwargs)
        return run(kwargs["models"], kwargs["output"], kwargs.get("names") or (), kwargs.get("as_json", False), **scale)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def run(models, output: Path, names, as_json: bool, fmt: str, **o) -> None:
    from edgedl.cli import emit_json
    from edgedl.stages.repository import TritonOptions

    kind = o["instance_kind"] or ("gpu" if fmt == "kserve" and o["gpus"] else "cpu")
    triton = TritonOptions(max_batch_size=o["max_batch_size"], dynamic_batching=not o["no_dynamic_batching"],
                           max_queue_delay_us=o["max_queue_delay_us"], instance_count=o["instances"], instance_kind=kind)
    if fmt == "triton":
        from edgedl.stages.triton import write_triton_repository

        result = write_triton_repository(list(models), output, triton, list(names))
    else:
        from edgedl.errors import EdgeDLError
        from edgedl.stages.kserve import KServeOptions, write_kserve

        if not o["storage_uri"]:
            raise EdgeDLError("--format kserve needs --storage-uri: where you will upload the repository "
                              "(e.g. s3://my-bucket/models/digits); nothing was written")
        name = o["service_name"] or (list(names) or [Path(models[0]).stem])[0].lower().replace("_", "-").replace(".", "-")
        result = write_kserve(list(models), output, KServeOptions(
            name=name, storage_uri=o["storage_uri"], namespace=o["namespace"], cpu=o["cpu"], memory=o["memory"],
            gpus=o["gpus"], min_replicas=o["min_replicas"], max_replicas=o["max_replicas"]), triton, list(names))
    if as_json:
        emit_json(result.to_json())
        return
    _print(result)


def _print(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    console.print(f"[bold]{escape(result.repository)}[/]  Triton model repository, every config.pbtxt validated "
                  "against Triton's ModelConfig")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("model", "max_batch_size", "dynamic batching", "inputs", "outputs"):
        table.add_column(col)
    for m in result.models:
        fmt = lambda ts: ", ".join(f"{t.name}:{t.data_type}[{','.join(map(str, t.dims))}]" for t in ts)  # noqa: E731
        table.add_row(m.name, str(m.max_batch_size), "yes" if m.dynamic_batching else "no",
                      escape(fmt(m.inputs)), escape(fmt(m.outputs)))
    console.print(table)
    for m in result.models:
        for note in m.notes:
            console.print(f"note: {m.name}: {escape(note)}")
    if result.format == "kserve":
        console.print(f"InferenceService [bold]{result.options.name}[/] (protocol v2, storage "
                      f"{escape(result.options.storage_uri)}): {escape(result.manifest)}")
        console.print(f"how to apply it: {escape(result.readme)}")
