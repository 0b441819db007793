"""`--help` of every subcommand: each option has a line of help and shows its default; one flag convention per family.

`train` keeps transformers' `--snake_case` flags (it takes every `TrainingArguments` flag); the
package's own commands use `--kebab-case`, and their booleans are `--x/--no-x`.
"""

import argparse
import re
import subprocess
import sys

import pytest

from mmmmodal_hf.cli import align_combine_parser
from mmmmodal_hf.cli_help import video_reading_options
from mmmmodal_hf.training import MMMModalTrainArguments


def own_parsers() -> dict:
    from mmmmodal_hf.chat import build_parser as chat
    from mmmmodal_hf.conversion.build import build_parser as build
    from mmmmodal_hf.conversion.convert import build_parser as convert
    from mmmmodal_hf.conversion.push import build_parser as push
    from mmmmodal_hf.datatools.combine import build_parser as combine
    from mmmmodal_hf.datatools.relate import build_parser as relate
    from mmmmodal_hf.datatools.transcribe import build_parser as transcribe
    from mmmmodal_hf.datatools.validate import build_parser as validate
    from mmmmodal_hf.demo.command import build_parser as demo
    from mmmmodal_hf.evaluation import build_parser as evaluate
    from mmmmodal_hf.serving.serve import build_parser as serve
    from mmmmodal_hf.web import build_parser as web

    return {
        "chat": chat,
        "web": web,
        "serve": serve,
        "demo": demo,
        "eval": evaluate,
        "build": build,
        "convert": convert,
        "push": push,
        "align-combine": align_combine_parser,
        "data validate": validate,
        "data combine": combine,
        "data relate": relate,
        "data transcribe": transcribe,
    }


def option_blocks(help_text: str) -> dict[str, str]:
    """Each option's entry in `--help`, keyed by its first flag."""
    options = help_text.split("options:", 1)[1]
    blocks = re.split(r"\n(?=  -)", options.strip("\n"))
    return {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks if block.strip()}


@pytest.mark.parametrize("name", list(own_parsers()))
def test_every_option_says_what_it_does_and_its_default(name):
    parser = own_parsers()[name]()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings or action.dest}"
    for flag, block in option_blocks(parser.format_help()).items():
        if flag in ("-h", "--help"):
            continue
        shown = "default" in block.lower() or block.endswith("(required)")
        assert shown, f"mmmmodal {name} {flag}: no default shown in {block!r}"


@pytest.mark.parametrize("name", list(own_parsers()))
def test_the_package_commands_spell_flags_in_kebab_case_and_booleans_as_x_no_x(name):
    for action in own_parsers()[name]()._actions:
        for flag in action.option_strings:
            assert "_" not in flag, f"mmmmodal {name} {flag}: kebab-case"
        assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), (
            f"mmmmodal {name} {action.option_strings}: a boolean is --x/--no-x"
        )


@pytest.mark.parametrize("name", ["chat", "web", "eval"])
def test_the_commands_that_read_videos_take_the_same_flags(name, capsys):
    """`--num-frames N` or `--fps F`, and `--pool-frames`: the processor's keywords, only those given."""
    parser = own_parsers()[name]()
    given = ["model", *(["--data", "rows.jsonl", "--output-dir", "out"] if name == "eval" else [])]

    def read(*flags: str) -> dict:
        return video_reading_options(parser.parse_args([*given, *flags]))

    assert read() == {}  # the processor's defaults: 8 frames, whole
    assert read("--num-frames", "3", "--pool-frames") == {"num_frames": 3, "pool_frames": True}
    assert read("--fps", "0.5") == {"fps": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args([*given, "--num-frames", "3", "--fps", "1"])
    assert "argument --fps: not allowed with argument --num-frames" in capsys.readouterr().err
    for flag, value, said in [("--num-frames", "0", "must be a positive number; got 0"),
                              ("--num-frames", "2.5", "invalid int value: '2.5'"),
                              ("--fps", "-1", "must be a positive number; got -1"),
                              ("--fps", "inf", "must be a positive number; got inf")]:  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args([*given, flag, value])
        assert f"argument {flag}: {said}" in capsys.readouterr().err


def test_train_options_have_help_and_keep_transformers_spelling():
    from dataclasses import fields

    for field in fields(MMMModalTrainArguments):
        assert field.metadata.get("help"), f"--{field.name} has no help"
        assert "-" not in field.name
    completed = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "train", "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0
    blocks = option_blocks(completed.stdout)
    for field in fields(MMMModalTrainArguments):
        assert "default" in blocks[f"--{field.name}"].lower(), field.name


def test_numbers_out_of_their_range_are_refused_at_parse_time(capsys):
    """Values that generate or the data tools would take without a word (a negative temperature was greedy decoding,
    a --limit of -1 checked nothing) or refuse late, after loading a model."""
    parsers = own_parsers()
    cases = [
        ("chat", ["model"], "--max-new-tokens", "0", "must be a positive number; got 0"),
        ("chat", ["model"], "--min-new-tokens", "-1", "must be 0 or more; got -1"),
        ("chat", ["model"], "--temperature", "-0.5", "must be 0 or more; got -0.5"),
        ("chat", ["model"], "--temperature", "nan", "must be 0 or more; got nan"),
        ("chat", ["model"], "--top-p", "0", "must be above 0 and at most 1; got 0"),
        ("chat", ["model"], "--top-p", "1.5", "must be above 0 and at most 1; got 1.5"),
        ("data validate", ["rows.jsonl", "--processor", "m"], "--limit", "-1", "must be a positive number; got -1"),
        ("data combine", ["rows.jsonl", "--output", "o.jsonl"], "--rows", "0", "must be a positive number; got 0"),
        ("data relate", ["items.jsonl", "--output", "o.jsonl", "--endpoint", "u"], "--pairs", "0",
         "must be a positive number; got 0"),
        ("data transcribe", ["audio", "--model", "w", "--output", "o.jsonl"], "--batch-size", "0",
         "must be a positive number; got 0"),
        ("build", ["--output-dir", "out"], "--audio-conv-stride", "0", "must be a positive number; got 0"),
        ("demo", [], "--batch-size", "0", "must be a positive number; got 0"),
        ("demo", [], "--learning-rate", "0.0", "must be a positive number; got 0.0"),
    ]  # fmt: skip
    for name, given, flag, value, said in cases:
        with pytest.raises(SystemExit):
            parsers[name]().parse_args([*given, flag, value])
        assert f"argument {flag}: {said}" in capsys.readouterr().err, (name, flag, value)
    assert parsers["chat"]().parse_args(["model", "--temperature", "0", "--top-p", "1"]).temperature == 0.0


def test_hub_repo_ids_are_checked_as_huggingface_hub_checks_them(capsys):
    """`push --dry-run` said it would upload to `bad/re/po`; the real push would have failed at the Hub's first call."""
    parsers = own_parsers()
    for name, given, flag, value, said in [
        ("push", ["folder"], "--repo-id", "bad/re/po", "Repo id must be in the form 'repo_name' or "
         "'namespace/repo_name': 'bad/re/po'"),
        ("push", ["folder", "--repo-id", "you/model"], "--space", "you/chat--x", "Cannot have -- or .. in repo_id"),
        ("build", ["--output-dir", "out"], "--repo-id", "a b/c", "Repo id must use alphanumeric chars"),
        ("convert", ["released", "--output-dir", "out"], "--repo-id", "x/y/z", "Repo id must be in the form"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit):
            parsers[name]().parse_args([*given, flag, value])
        assert f"argument {flag}: {said}" in capsys.readouterr().err, (name, flag)
    assert parsers["push"]().parse_args(["folder", "--repo-id", "model"]).repo_id == "model"  # the token's namespace


def test_version_names_the_package_and_the_libraries_it_runs_on():
    """`mmmmodal --version`, as `vllm --version` answers; it named no version ("arguments are required: COMMAND")."""
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "mmmmodal_hf.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"mmmmodal-hf {version('mmmmodal-hf')} (transformers {version('transformers')}, "
                                  f"torch {version('torch')}, vllm ")  # fmt: skip
