"""The KServe v2 / Triton gRPC messages, built at import from a vendored descriptor set - no generated code.

``inference.pb`` is the FileDescriptorSet of Triton's ``grpc_service.proto`` and ``model_config.proto``
(github.com/triton-inference-server/common @ 83adf7c, BSD-3-Clause, sources in ``protos/``), made with::

    python -m grpc_tools.protoc -I protos --include_imports --descriptor_set_out=inference.pb grpc_service.proto

Loading it into a private descriptor pool, instead of shipping protoc's ``*_pb2.py``, keeps the server working
with any protobuf >= 4.22 (generated modules refuse runtimes older than the protoc that made them) and lets
it share a process with tritonclient, whose generated modules register the same file names in the default pool.
"""

from __future__ import annotations

from pathlib import Path

from edgedl.errors import EdgeDLError

SERVICE = "inference.GRPCInferenceService"


def _load():
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        from google.protobuf import json_format
    except ImportError:
        raise EdgeDLError("the gRPC endpoint needs hpack and protobuf; install them with: pip install "
                          "'edgedl[grpc]'") from None
    if not hasattr(message_factory, "GetMessageClass"):
        raise EdgeDLError("the gRPC endpoint needs protobuf >= 4.22; upgrade it with: pip install 'edgedl[grpc]'")
    files = descriptor_pb2.FileDescriptorSet.FromString((Path(__file__).parent / "inference.pb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    return pool, message_factory, json_format


_POOL, _FACTORY, json_format = _load()


def message(name: str):
    """The message class for ``inference.NAME``."""
    return _FACTORY.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


def methods() -> dict[str, tuple[type, type, bool]]:
    """Every RPC of the service: name -> (request class, response class, streaming)."""
    service = _POOL.FindServiceByName(SERVICE)
    return {m.name: (_FACTORY.GetMessageClass(m.input_type), _FACTORY.GetMessageClass(m.output_type),
                     m.client_streaming or m.server_streaming) for m in service.methods}
