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
