"""The errors every layer raises for bad input, and how a CLI prints one in a line."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message names the file and the field."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and the reason."""


def error_line(e: BaseException) -> str:
    """The message of `e` as one line. An error raised in a DataLoader worker comes back with the
    worker's whole traceback as its message; its last line is the original error."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return str(e)
    head, sep, rest = lines[-1].partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(e).__name__ else lines[-1]
