"""How the commands say what went wrong with their inputs: one line naming the input, never a traceback."""

from contextlib import contextmanager
from pathlib import Path


class InputError(ValueError):
    """An input a command cannot use; the message names it. `mmmmodal` prints it as one line and exits 1."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def why_unloadable(source: str, error: BaseException) -> str:
    """Why `source` (a folder or a Hub id) did not load. A path that is not there is said to be missing:
    transformers would answer that it is no valid repo id, true but no help for a typo in a path."""
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().exists():
        return "no such folder"
    return first_line(error)


@contextmanager
def loading(source, what: str = "an MMMModal model"):
    """Around a `from_pretrained` of `source`: its failure becomes an InputError naming the source."""
    try:
        yield
    except (OSError, ValueError, KeyError) as error:  # KeyError: a config of a model type transformers lacks
        raise InputError(f"cannot load {what} from {str(source)!r}: {why_unloadable(str(source), error)}") from error


__all__ = ["InputError", "first_line", "loading", "why_unloadable"]
