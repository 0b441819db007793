"""How the commands say what went wrong with their inputs: one line naming the input, never a traceback."""

import socket
from contextlib import contextmanager
from pathlib import Path


class InputError(ValueError):
    """An input a command cannot use; the message names it. `mmmmodal` prints it as one line and exits 1."""


def first_line(error: BaseException) -> str:
    """The error's message in one line; for an error a DataLoader worker raised again (`Caught InputError in
    DataLoader worker process 0. Original Traceback ...`), the original message."""
    text = str(error).strip()
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        text = text.rsplit("\n", 1)[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def local_path(source: str) -> Path | None:
    """`source` as a local path where it is meant as one, else None (a Hub id, `owner/name`).

    Meant as a path: written as one (`/`, `.`, `~`, more than one `/`), there on disk, or a name whose first
    part is a folder here: `mmmmodal-demo/modle` beside `mmmmodal-demo/` is a typo in a path, which as a Hub id
    would cost a minute of retried downloads before the same answer.
    """
    path = Path(source).expanduser()
    first_part = source.split("/", 1)[0]
    written_as_path = source.startswith(("/", ".", "~")) or source.count("/") > 1
    if written_as_path or path.exists() or ("/" in source and Path(first_part).is_dir()):
        return path
    return None


def local_problem(source: str, needs: str | None = "config.json") -> str | None:
    """What is wrong with `source` as a local folder (None where nothing is, or where it is a Hub id): not
    there, not a folder, or without the file `needs` that every saved model holds."""
    path = local_path(source)
    if path is None:
        return None
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "not a folder"
    if needs and not (path / needs).is_file():
        return f"the folder has no {needs}, so it holds no saved model"
    return None


def why_unloadable(source: str, error: BaseException) -> str:
    """Why `source` (a folder or a Hub id) did not load. A path that is not there is said to be missing:
    transformers would answer that it is no valid repo id, true but no help for a typo in a path."""
    return local_problem(source, needs=None) or first_line(error)


def require_loadable(source, what: str = "an MMMModal model", needs: str | None = "config.json") -> None:
    """Refuse a local `source` that cannot hold what is asked for, at once, before anything is loaded."""
    if problem := local_problem(str(source), needs):
        raise InputError(f"cannot load {what} from {str(source)!r}: {problem}")


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on `host:port` (another server holds it, no such address here), found before
    a model loads (vLLM's start-up takes a minute on a CPU and ends in a traceback); None where it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closed one's port is free
            probe.bind((host, port))
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error.strerror or error} (another server? pass another --port)"
    return None


@contextmanager
def loading(source, what: str = "an MMMModal model", needs: str | None = "config.json"):
    """Around a `from_pretrained` of `source`: a local folder that is not there (or holds no `needs`) is refused
    before it starts, and its failure becomes an InputError naming the source."""
    require_loadable(source, what, needs)
    try:
        yield
    except (OSError, ValueError, KeyError) as error:  # KeyError: a config of a model type transformers lacks
        raise InputError(f"cannot load {what} from {str(source)!r}: {why_unloadable(str(source), error)}") from error


__all__ = [
    "InputError", "first_line", "loading", "local_path", "local_problem", "port_problem", "require_loadable",
    "why_unloadable",
]  # fmt: skip
