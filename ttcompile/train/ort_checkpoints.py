"""Checkpoints of the onnxruntime-training backend: ours (``PATH``) and ORT's CheckpointState beside it.

``PATH`` is an ``.npz`` (loaded with ``allow_pickle=False``) holding ``meta`` (JSON: format, fingerprint,
epoch, history, best epoch and val, the name of ORT's file) and ``best.<name>`` (the best epoch's trained
initializers). ORT's state (parameters and optimizer moments/step) of epoch k is ``PATH.ort<k>``. Save
order: ORT's file (atomic rename), then ``PATH`` (atomic rename), then older ``PATH.ort*`` are removed;
a run killed at any point leaves a ``PATH`` whose ORT file exists and belongs to the same epoch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttcompile.atomic import atomic_path, write_bytes_atomic
from ttcompile.errors import UserError

FORMAT = "ttcompile-finetune-ort-1"


@dataclass
class Saved:
    meta: dict[str, Any]  # epoch, history (History as a dict), best_epoch, best_val
    best: dict[str, np.ndarray]  # initializer name -> the best epoch's value
    ort_state: Path  # ORT CheckpointState file of ``meta["epoch"]``


def _ort_files(path: Path) -> list[Path]:
    return [p for p in path.parent.glob(f"{path.name}.ort*") if p.name[len(path.name) + 4:].isdigit()]


def save(path: Path, digest: str, meta: dict[str, Any], best: dict[str, np.ndarray], save_ort) -> None:
    """Write ORT's state with ``save_ort(file)`` and ours, each atomically; then drop stale ORT files."""
    ort_file = path.with_name(f"{path.name}.ort{meta['epoch']}")
    with atomic_path(ort_file) as tmp:
        save_ort(tmp)
    header = {"format": FORMAT, "fingerprint": digest, "ort_state": ort_file.name, **meta}
    arrays = {f"best.{name}": value for name, value in best.items()}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    write_bytes_atomic(path, buffer.getvalue())
    for stale in _ort_files(path):
        if stale != ort_file:
            stale.unlink(missing_ok=True)


def load(path: Path, digest: str) -> Saved:
    """Read a checkpoint, refusing unreadable files, torch-backend checkpoints and other runs'."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz["meta"].tobytes())
            best = {key[len("best."):]: npz[key] for key in npz.files if key.startswith("best.")}
    except Exception as exc:
        raise UserError(f"{path}: not a readable fine-tuning checkpoint of the ort backend "
                        f"({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path}: not a ttcompile ort-backend fine-tuning checkpoint")
    if header["fingerprint"] != digest:
        raise UserError(f"{path}: checkpoint of a different run (model, teacher, data or settings differ); "
                        "remove it or start without resume")
    ort_state = path.with_name(header["ort_state"])
    if not ort_state.is_file():
        raise UserError(f"{path}: its onnxruntime state {ort_state.name} is missing")
    meta = {k: v for k, v in header.items() if k not in ("format", "fingerprint", "ort_state")}
    return Saved(meta, best, ort_state)
