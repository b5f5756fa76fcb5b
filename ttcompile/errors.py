"""User-facing errors. The CLI prints either as one line: UserError exits with code 2 (bad input),
VerificationError with code 3 (the compressed model failed its check; nothing was written).

Messages name options through ``opt(name)``, with the Python API's name (``ratio``, ``input_shapes``): ``str``
of the error reads ``ratio``, the command line shows the flag (``--ratio``, ``--input-shape``; ``cli_text``)."""

from __future__ import annotations

import re

EXIT_USER = 2
EXIT_VERIFY = 3

_OPTION = re.compile(r"\{option:(\w+)\}")
# Python names whose flag is not ``--`` + the name with dashes
FLAGS = {"ranks": "--rank", "input_shapes": "--input-shape", "formats": "--format", "batches": "--batch",
         "recovery": "--recover-mode/--recover-steps/--recover-epochs/--recover-lr", "training": "--finetune-epochs",
         "latency_batch": "--batch", "names": "MODEL"}


def opt(name: str) -> str:
    """A placeholder for option ``name`` in a message (see the module docstring)."""
    return f"{{option:{name}}}"


def flag(name: str) -> str:
    """The command-line flag of the Python option ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def cli_text(text: str) -> str:
    """``text`` with its option placeholders as command-line flags."""
    return _OPTION.sub(lambda m: flag(m.group(1)), text)


class _Message(Exception):
    def __str__(self) -> str:
        return _OPTION.sub(lambda m: m.group(1), super().__str__())

    def cli_message(self) -> str:
        return cli_text(super().__str__())


class UserError(_Message):
    """Bad input from the user (file, option, data). The message names what was wrong."""


class OptionError(UserError):
    """An option value, or a combination of options, that cannot be used."""


class VerificationError(_Message):
    """The compressed model's outputs are further from the original's than the gate allows."""
