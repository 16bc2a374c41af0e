"""Errors that reach the user as one line on stderr, never as a traceback."""


class CifarlabError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(CifarlabError, ValueError):
    """Bad input: an unknown name, a value out of range, a broken file (exit 2).

    cli: the line the command line prints instead, where the advice differs there (Python can be handed a
    class; a shell cannot)."""

    exit_code = 2

    def __init__(self, message: str = "", cli: str | None = None):
        super().__init__(message)
        self.cli = cli


class DataError(UsageError):
    """Dataset files missing, unreadable or malformed; the message names the file."""


class Interrupted(CifarlabError):
    """Stopped by SIGINT / SIGTERM after saving; exit 128 + the signal number (130 / 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(CifarlabError):
    """A non-finite training loss; the last good checkpoint is kept (exit 1)."""
