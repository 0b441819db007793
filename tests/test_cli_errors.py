"""A command given an input it cannot use ends with one line naming it and exit status 1, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmmmodal_hf.cli_errors import why_unloadable


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("mmmmodal")), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "./no_model", "-p", "Apa?"], "mmmmodal chat: cannot load an MMMModal model from './no_model': no such folder"),
        (
            ["train", "--stage", "align", "--model", "runs/a/b", "--data", "rows.jsonl", "--output_dir", "out"],
            "mmmmodal train: cannot load an MMMModal model from 'runs/a/b': no such folder",
        ),
        (["align-combine", "/no/image_run", "b", "c"], "mmmmodal align-combine: cannot load an MMMModal model from '/no/image_run': no such folder"),
        (["convert", "../released", "--output-dir", "out"], "mmmmodal convert: cannot load a released checkpoint from '../released': no such folder"),
        (["data", "combine", "missing.jsonl", "--output", "all.jsonl"], "mmmmodal data: no data at missing.jsonl"),
        (["demo", "--output-dir", "a_file/demo"], "mmmmodal demo: [Errno 20] Not a directory: 'a_file/demo'"),
    ],
)  # fmt: skip
def test_a_missing_input_is_named_in_one_line(args, message, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    completed = run(*args, cwd=tmp_path)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_only_a_path_that_is_not_there_is_called_missing(tmp_path):
    error = OSError("Repo id must be in the form 'repo_name' or 'namespace/repo_name'")
    assert why_unloadable(str(tmp_path / "absent"), error) == "no such folder"
    assert why_unloadable("./absent", error) == "no such folder"
    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")
    assert (
        why_unloadable("someone/model", offline)
        == "We couldn't connect to 'https://huggingface.co' to load the files."
    )
    assert why_unloadable(str(tmp_path), OSError("no config.json")) == "no config.json"  # there, but not a model
