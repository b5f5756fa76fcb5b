"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target (never a partial file).

Temporary names are ``.NAME.<pid>-<hex>.tmp`` next to the target. A process killed mid-write leaves
such a file behind; the next write of the same target removes those of dead processes.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A fresh temporary sibling of ``path`` tagged with this process id."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove ``.NAME.<pid>-<hex>.tmp`` siblings of ``path`` left by processes that no longer run."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[0-9a-f]{{8}}\.tmp")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))) and entry.is_file():
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_paths(*paths: str | os.PathLike, parents: bool = False) -> Iterator[list[Path]]:
    """Yield fresh temporary paths next to ``paths`` for the caller to write; on success each is fsynced,
    then all are renamed over their targets in the given order (so give a model's plan before the model),
    then the folder is fsynced. On error every temporary file is removed and no target is touched.
    ``parents`` creates missing folders (for caches; command outputs never do)."""
    targets = [Path(p) for p in paths]
    for t in targets:
        if parents:
            t.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(t)
    tmps = [temp_name(t) for t in targets]
    try:
        yield tmps
        for tmp in tmps:
            _fsync_file(tmp)
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
        for folder in {t.parent for t in targets}:
            _fsync_dir(folder)
    finally:
        for tmp in tmps:
            if os.path.lexists(tmp):
                os.remove(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, parents: bool = False) -> Iterator[Path]:
    """``atomic_paths`` for one target."""
    with atomic_paths(path, parents=parents) as (tmp,):
        yield tmp


def write_files_atomic(files: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one step: all temporaries written and fsynced, then renamed in dict order."""
    with atomic_paths(*files) as tmps:
        for tmp, data in zip(tmps, files.values()):
            tmp.write_bytes(data)
    return [Path(p) for p in files]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_files_atomic({path: data})[0]
