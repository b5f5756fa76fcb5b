"""Transformer encoders for export tests: a small BERT-style encoder and a plain ``nn.TransformerEncoder``.

Both take token ids ``(N, T)`` int64 and return ``(N, T, d_model)`` hidden states, so the Linear layers
export as MatMul with constant ``(in, out)`` weights on 3-D activations. ``export_encoder`` writes
either with the dynamo exporter or the TorchScript one, dynamic batch and sequence dims.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v Linear layers; ``(N, T, d) -> (N, T, d)``."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, heads, T, d_head)
            return y.reshape(n, t, self.heads, self.d_head).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_head), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(n, t, d))


class BertLayer(nn.Module):
    """Post-LayerNorm block: ``x = LN(x + attn(x)); x = LN(x + W2 GELU(W1 x))``."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.attn, self.ln1, self.ln2 = SelfAttention(d, heads), nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.ffn(x))


class TinyBert(nn.Module):
    """Token + position embedding, LayerNorm, ``layers`` BertLayers; ids ``(N, T)`` -> ``(N, T, d)``."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2,
                 max_len: int = 64):
        super().__init__()
        self.tok, self.pos, self.ln = nn.Embedding(vocab, d), nn.Embedding(max_len, d), nn.LayerNorm(d)
        self.layers = nn.ModuleList(BertLayer(d, heads, ffn) for _ in range(layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.tok(ids) + self.pos(pos)[None])
        for layer in self.layers:
            x = layer(x)
        return x


class PlainEncoder(nn.Module):
    """Token embedding + ``nn.TransformerEncoder`` (batch first, GELU); ids ``(N, T)`` -> ``(N, T, d)``.

    ``distinct=False`` keeps the layers as the identical clones torch makes (exporters then store each
    weight once: the TorchScript exporter feeds the copies through Identity nodes).
    """

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2,
                 distinct: bool = True):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        block = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        if distinct:  # the layers start as clones; re-draw them as a trained model's would differ
            for param in self.encoder.parameters():
                nn.init.normal_(param, std=0.02 if param.dim() == 1 else param.shape[-1] ** -0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tok(ids))


def export_encoder(model: nn.Module, path: str | os.PathLike, *, dynamo: bool, seq: int = 8,
                   opset: int = 18) -> Path:
    """Export ``model`` (eval) with input ``ids`` ``(batch, seq)`` int64 and output ``hidden``; both dims dynamic."""
    model = model.eval()
    ids = torch.randint(0, model.tok.num_embeddings, (2, seq))
    path = Path(path)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (ids,), dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["ids"], output_names=["hidden"],
                                        dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},))
            onnx.save(program.model_proto, path)
        else:
            torch.onnx.export(model, (ids,), str(path), dynamo=False, opset_version=min(opset, 17),
                              input_names=["ids"], output_names=["hidden"],
                              dynamic_axes={"ids": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"}})
    return path
