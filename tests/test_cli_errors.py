"""A command given an input it cannot use (a missing path, a flag's value its checks refuse) ends with one line naming
it and exit status 1, never a traceback."""

import os
from pathlib import Path

import pytest

from mmmmodal_hf.cli_errors import local_path, why_unloadable

from console import run_cases

MISSING = [
    (["chat", "./no_model", "-p", "Apa?"], "mmmmodal chat: cannot load an MMMModal model from './no_model': no such folder"),
    (["web", "./no_model"], "mmmmodal web: cannot load an MMMModal model from './no_model': no such folder"),
    (
        ["train", "--stage", "align", "--model", "runs/a/b", "--data", "rows.jsonl", "--output_dir", "out"],
        "mmmmodal train: cannot load an MMMModal model from 'runs/a/b': no such folder",
    ),
    (["align-combine", "/no/image_run", "b", "c"], "mmmmodal align-combine: cannot load an MMMModal model from '/no/image_run': no such folder"),
    (["convert", "../released", "--output-dir", "out"], "mmmmodal convert: cannot load a released checkpoint from '../released': no such folder"),
    (["data", "combine", "missing.jsonl", "--output", "all.jsonl"], "mmmmodal data: no data at missing.jsonl"),
    (["data", "combine", "rows.jsonl", "--output", "all.jsonl", "--mix", "image=0.5,audio"],
     "mmmmodal data: 'audio' is not KEY=PROBABILITY (or KEY:PROBABILITY) in 'image=0.5,audio'"),
    (["data", "combine", "rows.jsonl", "--output", "all.jsonl", "--mix", "image=1,vidoe=1"],
     "mmmmodal data: --mix kinds are image, audio, video, mixed; got image, vidoe"),
    (["data", "combine", "rows.jsonl", "--output", "all.csv"], "mmmmodal data: --output all.csv: write a .jsonl or .parquet file"),
    (["demo", "--output-dir", "a_file/demo"], "mmmmodal demo: [Errno 20] Not a directory: 'a_file/demo'"),
    (["demo", "--video", "--output-dir", "none"],
     "world/. Run `mmmmodal demo --output-dir none` (or --quick) first."),
    (["train", "--stage", "aling", "--model", "m", "--data", "rows.jsonl", "--output_dir", "out"],
     "mmmmodal train: --stage must be one of ('align', 'finetune', 'lora'); got 'aling'"),
    (["train", "--stage", "finetune", "--model", "m", "--data", "rows.jsonl", "--output_dir", "out", "--fps", "0"],
     "mmmmodal train: --fps must be a positive number; got 0.0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def missing_outcomes(tmp_path_factory) -> list[tuple[dict, Path]]:
    folders = [tmp_path_factory.mktemp("missing") for _ in MISSING]
    for folder in folders:
        (folder / "a_file").write_text("not a folder")
    outcomes = run_cases([(args, folder) for (args, _), folder in zip(MISSING, folders)],
                         {**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    return list(zip(outcomes, folders))


@pytest.mark.parametrize("case", range(len(MISSING)), ids=[" ".join(args[:2]) for args, _ in MISSING])
def test_a_missing_input_is_named_in_one_line(case, missing_outcomes):
    outcome, folder = missing_outcomes[case]
    assert outcome["status"] == 1 and "Traceback" not in outcome["stderr"], outcome["stderr"]
    assert outcome["stderr"].strip().splitlines()[-1].endswith(MISSING[case][1])
    assert sorted(path.name for path in folder.iterdir()) == ["a_file"]  # nothing written


TYPO = "mmmmodal-demo/modle"  # the README's path style, one letter off, beside a real mmmmodal-demo/ folder
TYPOS = [
    (["chat", TYPO, "-p", "hi"], f"mmmmodal chat: cannot load an MMMModal model from '{TYPO}': no such folder"),
    (["web", TYPO], f"mmmmodal web: cannot load an MMMModal model from '{TYPO}': no such folder"),
    (["serve", TYPO], f"mmmmodal serve: cannot load an MMMModal model from '{TYPO}': no such folder"),
    (["train", "--stage", "align", "--model", TYPO, "--data", "rows.jsonl", "--output_dir", "out"],
     f"mmmmodal train: cannot load an MMMModal model from '{TYPO}': no such folder"),
    (["convert", TYPO, "--output-dir", "out"], f"mmmmodal convert: cannot load a released checkpoint from '{TYPO}': no such folder"),
    (["push", TYPO, "--repo-id", "you/model", "--dry-run"], f"mmmmodal push: cannot load a model to publish from '{TYPO}': no such folder"),
    (["data", "validate", "rows.jsonl", "--processor", TYPO], f"mmmmodal data: cannot load a processor from '{TYPO}': no such folder"),
    (["chat", "mmmmodal-demo", "-p", "hi"],
     "mmmmodal chat: cannot load an MMMModal model from 'mmmmodal-demo': the folder has no config.json, so it holds no saved model"),
]  # fmt: skip


@pytest.fixture(scope="module")
def typo_outcomes(tmp_path_factory) -> list[dict]:
    """The Hub is a closed port on 127.0.0.1 here, so any request would fail loudly."""
    folder = tmp_path_factory.mktemp("typos")
    (folder / "mmmmodal-demo" / "world").mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens
    return run_cases([(args, folder) for args, _ in TYPOS], env)


@pytest.mark.parametrize("case", range(len(TYPOS)), ids=[" ".join(args[:2]) for args, _ in TYPOS])
def test_a_typo_in_a_local_path_is_named_at_once_without_the_network(case, typo_outcomes):
    """A name whose first part is a folder here is a local path: no Hub request, no retries (found: twelve
    `Retrying in 8s` lines and 51 s, then "couldn't connect"). None is made."""
    outcome = typo_outcomes[case]
    assert outcome["status"] == 1 and "Traceback" not in outcome["stderr"], outcome["stderr"]
    assert outcome["stderr"].strip().splitlines()[-1] == TYPOS[case][1]
    assert "Retrying" not in outcome["stderr"] and "127.0.0.1:9" not in outcome["stderr"]


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


def test_a_hub_id_is_not_taken_for_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert local_path("mesolitica/malaysian-tinyllama-1.1b-mmmmodal") is None  # owner/name, no folder 'mesolitica'
    assert local_path("gpt2") is None  # a bare name that is not here is a Hub id too
    assert local_path("runs/typo") == Path("runs/typo")  # its first part is a folder here
    assert local_path("runs") == Path("runs") and local_path("a/b/c") == Path("a/b/c")


@pytest.mark.parametrize("command", ["serve", "web"])
def test_a_port_another_server_holds_is_named_before_the_model_loads(command, tmp_path):
    """Found: `mmmmodal serve` on a port in use (a second server) ran vLLM's start-up, a minute on a CPU, to end in
    a 40-line traceback (`OSError: [Errno 98] Address already in use`); `mmmmodal web` loaded the model first, then
    gave Gradio's advice to pass `server_port` to `launch()`."""
    import socket
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        completed = subprocess.run([sys.executable, "-m", "mmmmodal_hf.cli", command, str(tmp_path), "--port", str(port)],
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        f"mmmmodal {command}: cannot listen on 127.0.0.1:{port}: Address already in use (another server? pass another "
        "--port)"
    )
