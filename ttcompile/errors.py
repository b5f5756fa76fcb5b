"""User-facing errors. The CLI prints either as one line: UserError exits with code 2 (bad input),
VerificationError with code 3 (the compressed model failed its check; nothing was written)."""

EXIT_USER = 2
EXIT_VERIFY = 3


class UserError(Exception):
    """Bad input from the user (file, option, data). The message names what was wrong."""


class VerificationError(Exception):
    """The compressed model's outputs are further from the original's than the gate allows."""
