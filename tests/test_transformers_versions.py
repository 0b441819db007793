"""The package spans transformers 5.19 (vLLM's pin) to the newest 5.x: training says in one line what it needs.

Runs in both of CI's venvs: the main one (the newest transformers, which trains) and the vLLM job's (5.19).
"""

import subprocess
import sys
from pathlib import Path

import transformers
from packaging.version import Version

from mmmmodal_hf.versions import TRAINING_NEEDS_TRANSFORMERS, require_training_transformers

TRAINS_HERE = Version(transformers.__version__) >= Version(TRAINING_NEEDS_TRANSFORMERS)


def test_training_runs_on_new_transformers_and_says_what_it_needs_on_old(capsys):
    status = require_training_transformers("mmmmodal train")
    message = capsys.readouterr().err
    if TRAINS_HERE:
        assert status is None and message == ""
    else:
        assert status == 2
        assert message.count("\n") == 1 and f"transformers>={TRAINING_NEEDS_TRANSFORMERS}" in message


def test_the_training_commands_exit_in_one_line_where_transformers_is_too_old():
    if TRAINS_HERE:  # the commands themselves train here: tests/test_training.py and test_demo.py drive them
        return
    command = str(Path(sys.executable).with_name("mmmmodal"))
    for name in ("train", "demo", "align-combine"):
        args = [command, name, *(["a", "b", "c"] if name == "align-combine" else [])]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (name, done.stderr)
        assert done.stderr.startswith(f"mmmmodal {name} needs transformers>="), done.stderr


def test_torch_has_a_floor_and_no_cap():
    """Found: `torch<2.15` made `pip install mmmmodal-hf` beside torch 2.15 replace it with 2.14 (gigabytes on a GPU
    machine). The package names no torch it cannot run on: a floor, no ceiling."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    (torch_requirement,) = [r for r in map(Requirement, requires("mmmmodal-hf")) if r.name == "torch" and not r.marker]
    assert not torch_requirement.specifier.contains("2.3.1")
    assert all(torch_requirement.specifier.contains(v) for v in ("2.4.0", "2.13.0", "2.15.0", "2.16.1", "3.0.0"))
