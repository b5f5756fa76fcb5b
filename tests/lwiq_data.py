"""A synthetic classification problem where exactly one layer makes the classes separable.

Class c (of K) draws ``x = +-a_c + noise`` with a random sign, so every class mean of the raw input is
about zero (an imprinted proxy on x is near chance). ``fc1`` has rows ``+a_c`` and ``-a_c`` and a
negative bias, so after its ReLU class c lights up units 2c or 2c+1: the informative layer. ``fc2`` is
the identity (ReLU of non-negative features changes nothing, no gain) and ``fc3`` reads out
``logits_c = h_2c + h_2c+1`` (no gain either).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_IN, HIDDEN, K = 64, 128, 4


def directions(seed: int = 0) -> np.ndarray:
    """``(K, N_IN)`` orthonormal class directions scaled to norm 4."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((N_IN, K)))
    return 4.0 * q.T


def samples(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (n, N_IN) float32 and balanced labels ``y`` (n,) int64."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    sign = rng.choice([-1.0, 1.0], size=n)
    x = sign[:, None] * directions()[y] + 0.5 * rng.standard_normal((n, N_IN))
    return x.astype(np.float32), y.astype(np.int64)


def model(path: Path, batch: str | int = "N") -> Path:
    """Write the three-layer MLP (Gemm -> Relu -> Gemm -> Relu -> Gemm) to ``path``; batch dim ``batch``."""
    rng = np.random.default_rng(2)
    a = directions()
    w1 = 0.01 * rng.standard_normal((HIDDEN, N_IN))
    w1[0:2 * K:2], w1[1:2 * K:2] = a, -a
    b1 = np.full(HIDDEN, -8.0)
    w2, b2 = np.eye(HIDDEN), np.zeros(HIDDEN)
    w3 = np.zeros((K, HIDDEN))
    for c in range(K):
        w3[c, 2 * c:2 * c + 2] = 1.0
    inits = {"W1": w1, "B1": b1, "W2": w2, "B2": b2, "W3": w3, "B3": np.zeros(K)}
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "W2", "B2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "W3", "B3"], ["logits"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "lwiq_toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, K])],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, path)
    return path


def calib_file(path: Path, n: int = 400, labels: bool = True, seed: int = 1) -> Path:
    x, y = samples(n, seed)
    np.savez(path, **({"x": x, "y": y} if labels else {"x": x}))
    return path


def mlp(path: Path, dims: tuple[int, ...] = (256, 512, 384, 10), seed: int = 0) -> Path:
    """Random Gemm -> Relu -> ... -> Gemm MLP with layer widths ``dims`` (layers fc0, fc1, ...)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        prev = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", dims[-1]])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, path)
    return path
