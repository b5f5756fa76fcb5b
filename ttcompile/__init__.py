"""ttcompile: ONNX-to-ONNX compression of Gemm/MatMul/Conv layers with tensor decompositions."""

__version__ = "0.1.0"
