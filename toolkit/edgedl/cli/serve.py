from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option
from edgedl.cli._shapes import shape_options
from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import is_bundle_path, open_bundle
from edgedl.runtime.server.config import LIMITS


def _presets(field: str) -> str:
    return f"[{' / '.join(LIMITS)}: {' / '.join(f'{getattr(p, field):,}' for p in LIMITS.values())}]"


@click.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--model-repository", type=click.Path(path_type=Path),
              help="Serve every model of a Triton-layout repository DIR/NAME/N/model.onnx (+ optional config.pbtxt).")
@click.option("--model-name", help="Name of the single MODEL (default: the file name without .onnx).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; pass 0.0.0.0 explicitly to accept connections from other machines.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0 picks a free one).")
@click.option("--grpc-port", type=int, default=None,
              help="Also serve the KServe v2 / Triton gRPC API on this port (same host and API key; needs "
                   "edgedl[grpc]). 0 picks a free one.")
@click.option("--api-key", envvar="EDGEDL_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every endpoint except /v2/health/live.")
@click.option("--max-batch-size", default=0, show_default=True, type=int,
              help="Dynamic batching: stack up to N rows per run (models with a dynamic axis 0; 0/1 = off). "
                   "A model's config.pbtxt overrides it.")
@click.option("--max-queue-delay-us", default=200, show_default=True, type=int,
              help="Dynamic batching: how long the first queued request waits for others.")
@click.option("--max-queue", default=256, show_default=True, type=int,
              help="Requests allowed to wait per model; beyond that the server answers 503.")
@click.option("--instances", default=1, show_default=True, type=int,
              help="Concurrent onnxruntime runs per model (config.pbtxt instance_group overrides it).")
@click.option("--threads", type=int, default=None,
              help="onnxruntime intra-op threads per run (0: onnxruntime's default) [default: the CPUs this process may use].")
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              help="Execution provider, in order of preference (repeatable).")
@click.option("--allow-fallback", is_flag=True, help="Run on what is available if a provider is missing.")
@click.option("--limits", "limits_preset", type=click.Choice(list(LIMITS)), default="default", show_default=True,
              help="Preset of the limits below ('small' for a 1-4 GB board); each option below overrides one.")
@click.option("--max-body-bytes", type=int, help="Refuse larger request bodies with 413 " + _presets("max_body_bytes") + ".")
@click.option("--max-tensor-elements", type=int,
              help="Refuse larger input tensors with 413 " + _presets("max_tensor_elements") + ".")
@click.option("--max-batch-rows", type=int,
              help="Refuse requests with more rows (axis 0) with 400 " + _presets("max_batch_rows")
                   + "; a model's config.pbtxt max_batch_size caps it for that model, as in Triton.")
@click.option("--max-connections", type=int,
              help="Open connections; beyond, the longest-idle one is closed, or the new one gets 503 "
                   + _presets("max_connections") + ".")
@click.option("--max-in-flight", type=int, help="Infer requests served at once; beyond, 503 " + _presets("max_in_flight") + ".")
@click.option("--header-timeout", type=float, help="Seconds for a request's headers to arrive " + _presets("header_timeout_s") + ".")
@click.option("--body-timeout", type=float, help="Seconds for a request's body to arrive " + _presets("body_timeout_s") + ".")
@click.option("--keep-alive-timeout", type=float,
              help="Seconds an idle keep-alive connection stays open " + _presets("keep_alive_timeout_s") + ".")
@click.option("--model-control", type=click.Choice(["none", "explicit", "poll"]), default="none", show_default=True,
              help="As Triton's --model-control-mode: 'none' loads every model and answers load/unload requests "
                   "503; 'explicit' loads the --load-model ones and takes POST /v2/repository/models/NAME/load "
                   "and unload (behind --api-key when set); 'poll' loads every model and follows the repository.")
@click.option("--load-model", "load_models", multiple=True,
              help="Explicit model control: a model to load at startup (repeatable; '*' loads every model).")
@click.option("--repository-poll-secs", type=float, default=15.0, show_default=True,
              help="Poll model control: seconds between looks at the repository for added, changed and removed "
                   "models.")
@click.option("--allow-outside-repository", is_flag=True,
              help="Serve repository models whose file resolves outside the repository (symlinks, '..', absolute "
                   "default_model_filename); refused by default.")
@click.option("--access-log", type=click.Choice(["off", "text", "json"]), default="off", show_default=True,
              help="One line per request on stderr (or --access-log-file): plain text or JSON lines.")
@click.option("--access-log-file", type=click.Path(path_type=Path), help="Append the access log to this file.")
@click.option("--trace-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Where Triton's trace extension writes traces (JSON) once POST /v2/trace/setting asks for "
                   "trace_level TIMESTAMPS.")
@click.option("--drain-timeout", default=30.0, show_default=True, type=float,
              help="Seconds to finish in-flight requests after SIGTERM/SIGINT.")
@click.option("--allow-nan", is_flag=True, help="Accept NaN/Inf in float inputs (refused with 400 by default).")
@shape_options
@click.option("--verify-key", type=click.Path(path_type=Path, dir_okay=False), envvar="EDGEDL_VERIFY_KEY",
              show_envvar=True, help="Serve only a bundle signed by this OpenSSH ed25519 public key "
                                     "(`edgedl package --sign KEY`), checked at start and at every reload.")
@click.option("--allow-missing-manifest", is_flag=True,
              help="Serve a BUNDLE that has no manifest.json, unverified (refused by default).")
@debug_option
def serve(model, model_repository, model_name, host, port, api_key, max_batch_size, max_queue_delay_us, max_queue,
          instances, threads, providers, allow_fallback, limits_preset, max_body_bytes, max_tensor_elements,
          max_batch_rows, max_connections, max_in_flight, header_timeout, body_timeout, keep_alive_timeout,
          model_control, load_models, repository_poll_secs, allow_outside_repository, access_log, access_log_file, trace_file, drain_timeout, allow_nan,
          shape_options, verify_key, allow_missing_manifest, debug, grpc_port) -> None:
    """Serve MODEL.onnx, a BUNDLE made by `edgedl package` (its directory or .tar.gz; its manifest is checked), or
    --model-repository DIR over the Open Inference Protocol v2 - the HTTP/REST API of Triton and KServe, with
    binary tensors - so tritonclient, curl or any KServe v2 client can call it.

    Reload with SIGHUP (or, with --model-control explicit, POST /v2/repository/models/NAME/load; with poll, by
    changing the repository); stop with SIGTERM/Ctrl-C (drains first).
    """
    import contextlib

    from edgedl.runtime.server import BatchPolicy, ServerConfig, serve as run_server

    if (model is None) == (model_repository is None):
        raise EdgeDLError("give either a MODEL.onnx or --model-repository DIR (or a BUNDLE), not both")
    bundle = contextlib.ExitStack()  # a .tar.gz BUNDLE is unpacked into a temporary directory for the server's life
    if model is not None and is_bundle_path(model):
        if model_repository is not None:
            raise EdgeDLError("give a BUNDLE or --model-repository DIR, not both")
        model, model_repository = None, bundle.enter_context(open_bundle(model, verify_key, allow_missing_manifest))
    options = {}
    if threads is not None:
        options["intra_op_threads"] = threads
    config = ServerConfig(
        model=model, model_repository=model_repository, model_name=model_name, host=host, port=port,
        grpc_port=grpc_port, api_key=api_key, verify_key=verify_key, model_control=model_control,
        load_models=tuple(load_models), poll_interval_s=repository_poll_secs,
        allow_outside_repository=allow_outside_repository,
        limits=LIMITS[limits_preset].replace(
            max_body_bytes=max_body_bytes, max_tensor_elements=max_tensor_elements, max_batch_rows=max_batch_rows,
            max_connections=max_connections, max_in_flight=max_in_flight, header_timeout_s=header_timeout,
            body_timeout_s=body_timeout, keep_alive_timeout_s=keep_alive_timeout),
        batching=BatchPolicy(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                             max_queue=max_queue, instances=instances),
        providers=tuple(providers), allow_fallback=allow_fallback, access_log=access_log,
        access_log_path=access_log_file, trace_file=trace_file, drain_timeout_s=drain_timeout,
        allow_nonfinite=allow_nan,
        shape_options=shape_options, **options,
    )
    with bundle:
        run_server(config)
