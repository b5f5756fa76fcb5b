"""Read a JSON document of ours (plan, analysis) with one-line errors naming the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ttcompile.errors import UserError

T = TypeVar("T")


def load_json(path: str | Path, what: str, parse: Callable[[Any], T]) -> T:
    """``parse(json.load(path))``; a missing/unreadable file or a document ``parse`` rejects (ValueError,
    KeyError, TypeError, AttributeError, too deep) is a UserError naming ``path`` and ``what``."""
    try:
        return parse(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except RecursionError:
        raise UserError(f"{path}: not a valid ttcompile {what} (nested too deeply)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a valid ttcompile {what} ({exc})") from None
