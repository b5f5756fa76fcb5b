"""Output-path safety shared by every command: no output may be an input, a folder, a device or a
path in a folder that does not exist. Commands call ``check_outputs`` once, before any work."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ttcompile.errors import UserError

PathLike = str | os.PathLike


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be reached): not the same file
        return False


def check_output(path: PathLike, option: str) -> Path:
    """The output ``path`` of ``option`` is writable as a regular file: named, its folder exists and
    is writable, and it is not an existing folder, device, FIFO or socket."""
    text = os.fspath(path)
    if not text or text.endswith(os.sep) or Path(text).name in ("", ".", ".."):
        raise UserError(f"{option} {text!r}: not a file name")
    out = Path(text)
    if os.path.lexists(out):
        try:
            mode = os.stat(out).st_mode
        except OSError as exc:
            raise UserError(f"{option} {out}: cannot be written ({exc.strerror})") from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise UserError(f"{option} {out}: exists and is {kind}; refusing to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise UserError(f"{option} {out}: folder {folder} does not exist (it is not created for you)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {out}: folder {folder} is not writable")
    return out


def check_outputs(inputs: Iterable[tuple[str, PathLike | None]], outputs: Iterable[tuple[str, PathLike | None]],
                  ) -> None:
    """Refuse before any work when an output (option, path) is unusable (``check_output``), is the same
    file as an input (``os.path.samefile``, so links and other spellings count), or another output.

    ``inputs`` are (option, path) pairs; entries that are None or not existing files (e.g. a dataset
    spec such as ``mnist:val``) are ignored.
    """
    ins = [(opt, Path(p)) for opt, p in inputs if p is not None and os.path.exists(p)]
    seen: list[tuple[str, Path]] = []
    for opt, p in outputs:
        if p is None:
            continue
        out = check_output(p, opt)
        for in_opt, src in ins:
            if _same(out, src):
                raise UserError(f"{opt} {out} is the same file as {in_opt} {src}; refusing to overwrite an input")
        for other_opt, other in seen:
            if os.path.abspath(out) == os.path.abspath(other) or _same(out, other):
                raise UserError(f"{opt} {out} and {other_opt} {other} are the same file")
        seen.append((opt, out))
