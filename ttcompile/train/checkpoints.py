"""Fine-tuning checkpoints: atomic save, checked load, and in-memory snapshots of module + hooks.

A checkpoint is a ``torch.save`` dict with ``format``, ``fingerprint`` (``common.fingerprint``: what it
may be resumed with) and the caller's state; it is loaded with ``weights_only=True``, so it holds only tensors and plain
Python values.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ttcompile.atomic import write_bytes_atomic
from ttcompile.errors import UserError
from ttcompile.train.executor import OnnxModule
from ttcompile.train.hooks import TrainHook

FORMAT = "ttcompile-finetune-1"


def snapshot(module: OnnxModule, hooks: Sequence[TrainHook]) -> dict[str, Any]:
    """A detached copy of the module's parameters and every hook's state."""
    return copy.deepcopy({"module": module.state_dict(), "hooks": [hook.state_dict() for hook in hooks]})


def restore(module: OnnxModule, hooks: Sequence[TrainHook], state: dict[str, Any]) -> None:
    """Load a ``snapshot`` (or a checkpoint, which holds the same keys) back into module and hooks."""
    module.load_state_dict(state["module"])
    for hook, hook_state in zip(hooks, state["hooks"], strict=True):
        hook.load_state_dict(hook_state)


def save(path: Path, digest: str, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a stopped run leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "fingerprint": digest, **state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load(path: Path, digest: str) -> dict[str, Any]:
    """Read a checkpoint, refusing unreadable files and checkpoints of another run."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable fine-tuning checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a ttcompile fine-tuning checkpoint")
    if state["fingerprint"] != digest:
        raise UserError(f"{path}: checkpoint of a different run (model, teacher, data or settings differ); "
                        "remove it or start without resume")
    return state
