"""Rewrite passes, one decomposition format per module; importing this registers them all."""

from ttcompile.passes import (
    cp,  # noqa: F401
    stp,  # noqa: F401
    svd,  # noqa: F401
    tr,  # noqa: F401
    tt,  # noqa: F401
    tucker,  # noqa: F401
)
from ttcompile.passes.base import FORMATS, Format, get_format  # noqa: F401
