"""Benchmarks on ONNX Runtime and their reports and tables."""
