from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._scaleout import scaleout_options
from edgedl.cli._shapes import shape_options


@click.command()
@scaleout_options  # --format triton|kserve (edgedl.stages.triton / kserve); --format bundle runs the command below
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", "-t", default=None, help="[bundle, required] Device profile name (see `edgedl deploy --list-targets`) or a .toml path.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Bundle directory to create (DIR.tar.gz too).")
@click.option("--python", "python", default=None, help="Python version on the device (default: the profile's first).")
@click.option("--name", "names", multiple=True, help="Model name in the bundle's repository, one per MODEL (default: file stem).")
@click.option("--port", default=8000, show_default=True, help="Port the server listens on by default.")
@click.option("--grpc-port", type=int, default=None,
              help="Also serve gRPC (KServe v2 / Triton) on this port by default; the wheelhouse then carries hpack and protobuf.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the server binds to by default.")
@click.option("--no-tarball", is_flag=True, help="Do not write DIR.tar.gz.")
@click.option("--ort", "ort_format", is_flag=True, help="Also write each model in onnxruntime's .ort format (minimal builds).")
@click.option("--edgedl-wheel", type=click.Path(path_type=Path), default=None, help="Use this edgedl wheel instead of building one.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Sign the manifest with this OpenSSH ed25519 key (ssh-keygen -Y sign; a .pub uses ssh-agent); "
                   "`edgedl serve/deploy --verify-key KEY.pub` then accept only what it signed.")
@shape_options
@json_option
@debug_option
def package(models, target, output, python, names, port, grpc_port, host, no_tarball, ort_format, edgedl_wheel,
            sign_key, shape_options, as_json, debug) -> None:
    """Bundle MODELS (.onnx) for a device profile: model repository, manifest with sha256 of every file, pinned
    requirements, an offline wheelhouse for the target's platform, start script, systemd unit and Dockerfile."""
    from edgedl.stages.package import PackageConfig, package as build

    result = build(PackageConfig(models=list(models), target=target, output=output, python=python, names=list(names),
                                 port=port, grpc_port=grpc_port, host=host, tarball=not no_tarball,
                                 edgedl_wheel=edgedl_wheel, ort_format=ort_format, sign_key=sign_key,
                                 shape_options=shape_options, progress=not as_json))
    if as_json:
        emit_json(result.to_json())
        return
    from rich.markup import escape
    from edgedl.console import out_console

    console = out_console()
    manifest = result.manifest
    prof = manifest.profile
    console.print(f"[bold]{escape(str(result.path))}[/]  {result.size_bytes / 2**20:.1f} MiB for {prof.name} "
                  f"({prof.arch}, Python {manifest.python}, onnxruntime {manifest.runtime.onnxruntime})", soft_wrap=True)
    fmt = lambda ts: ", ".join(f"{t.name}: {t.dtype}[{','.join(map(str, t.shape))}]" for t in ts)  # noqa: E731
    for m in manifest.models:
        console.print(escape(f"  {m.path}  {fmt(m.inputs)} -> {fmt(m.outputs)}  sha256 {m.sha256[:12]}"), soft_wrap=True)
    console.print(f"wheelhouse: {len(manifest.runtime.wheels)} wheels ({', '.join(manifest.runtime.requirements)})",
                  soft_wrap=True)
    if result.signature:
        pub = str(sign_key) if str(sign_key).endswith(".pub") else f"{sign_key}.pub"
        console.print(f"signed: {escape(str(result.signature))} (check it with --verify-key {escape(pub)})", soft_wrap=True)
    if result.tarball:
        console.print(f"tarball: {escape(str(result.tarball))}")
