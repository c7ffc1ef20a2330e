"""The gRPC endpoint of ``edgedl serve`` (KServe v2 GRPCInferenceService + Triton's extensions); needs the
``grpc`` extra (hpack, protobuf). ``GrpcServer(app)`` runs on the HTTP server's event loop."""

from edgedl.runtime.server.grpc_server.service import GrpcServer

__all__ = ["GrpcServer"]
