"""Layer-by-layer comparison of two sides of a model (torch or ONNX, here or on a device): capture every
intermediate tensor, align them, and report where the error appears. Shared by ``edgedl debug compare`` and
``edgedl quantize --bisect``."""
