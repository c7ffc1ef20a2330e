"""edgedl: from a PyTorch model to an edge device — export, prove, quantize, benchmark, package, serve."""

__version__ = "0.1.0"
