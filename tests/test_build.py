"""`mmmmodal build` from tiny checkpoints of the real source architectures."""

import json
import os
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from safetensors.torch import load_file

from mmmmodal_hf.conversion.build import PRESETS, build_checkpoint
from mmmmodal_hf.conversion.model_card import check_card, human_count
from mmmmodal_hf.conversion.verify import check_folder_loads

from console import run_cases
from hub_double import hub_serving, reaching
from tiny_parts import save_tiny_source_models

CREDITS = {
    "llm": PRESETS["tinyllama"]["llm"],
    "vision": PRESETS["tinyllama"]["vision"],
    "audio": PRESETS["tinyllama"]["audio"],
}
CREDITS_SOURCES = {"llm": "llm", "vision": "siglip", "audio": "whisper"}  # a preset's part -> its tiny source


@pytest.mark.parametrize("language_model", ["llama", "mistral"])
def test_build_composes_a_loadable_checkpoint(tmp_path, tokenizer_folder, language_model):
    sources = save_tiny_source_models(tmp_path / "sources", tokenizer_folder, language_model)
    output = tmp_path / "built"
    report = build_checkpoint(
        str(sources["llm"]),
        str(sources["siglip"]),
        str(sources["whisper"]),
        output,
        dtype="float32",
        repo_id="someone/mmmmodal-tiny",
        audio_conv_kernel=4,
        credit_names=CREDITS,
    )
    assert report.added_tokens == ["<image>", "</image>", "<audio>", "</audio>", "<image_slot>", "<audio_slot>"]
    config = json.loads((output / "config.json").read_text())
    assert config["text_config"]["model_type"] == language_model
    assert config["text_config"]["vocab_size"] == 32006

    weights = load_file(output / "model.safetensors")
    assert not [n for n in weights if "text_model" in n or "decoder" in n or "logit_" in n]
    assert any(n.startswith("model.vision_tower.encoder.layers.") for n in weights)
    assert any(n.startswith("model.audio_tower.layers.") for n in weights)

    # Every weight of the sources arrives unchanged; the new embedding rows are the old rows' mean.
    lm = load_file(sources["llm"] / "model.safetensors")
    embeddings = weights["model.language_model.embed_tokens.weight"]
    assert torch.equal(embeddings[:32000], lm["model.embed_tokens.weight"])
    expected_row = lm["model.embed_tokens.weight"].mean(0)
    assert torch.allclose(embeddings[32000:], expected_row.expand(6, -1), atol=1e-6)
    assert torch.allclose(weights["lm_head.weight"][32000:], lm["lm_head.weight"].mean(0).expand(6, -1), atol=1e-6)
    assert torch.equal(
        weights["model.language_model.layers.0.self_attn.q_proj.weight"], lm["model.layers.0.self_attn.q_proj.weight"]
    )
    # Towers end at the feature layer (-2 of 2): layer 1, the final norms and SigLIP's head are dropped and reported.
    unused = (".layers.1.", "post_layernorm.", ".head.", "encoder.layer_norm.")
    siglip = load_file(sources["siglip"] / "model.safetensors")
    whisper = load_file(sources["whisper"] / "model.safetensors")
    sources_kept = 0
    for weights_from, prefix, ours in (
        (siglip, "vision_model.", "model.vision_tower."),
        (whisper, "model.encoder.", "model.audio_tower."),
    ):
        for name, value in weights_from.items():
            if name.startswith(prefix) and not any(part in name for part in unused):
                assert torch.equal(weights[ours + name[len(prefix) :]], value), name
                sources_kept += 1
    assert sources_kept == sum(n.startswith(("model.vision_tower.", "model.audio_tower.")) for n in weights)
    assert set(report.dropped) == {
        "vision tower layer 1",
        "vision tower post_layernorm",
        "vision tower head",
        "audio tower layer 1",
        "audio tower layer_norm",
    }
    assert "dropped vision tower layer 1" in report.summary()

    processor_config = json.loads((output / "processor_config.json").read_text())
    assert {"image_processor", "feature_extractor"} <= set(processor_config)
    assert (output / "chat_template.jinja").exists() and (output / "generation_config.json").exists()
    card = check_card(output / "README.md")
    assert card.data.base_model == list(CREDITS.values())
    assert (
        "someone/mmmmodal-tiny" in card.text
        and "2402.11297" in card.text
        and human_count(report.parameters["total"]) in card.text
    )
    # The card asks for the transformers the Hub modules need, the package's own floor (CI's vLLM job runs them there).
    pin = Requirement(next(line for line in requires("mmmmodal-hf") if line.startswith("transformers")))
    floor = next(spec.version for spec in pin.specifier if spec.operator == ">=")
    assert f"`transformers>={floor}`" in card.text

    loaded = check_folder_loads(output)
    assert loaded["model_class"] == "MMMModalForConditionalGeneration" and loaded["new_tokens"] == 2


def test_build_dry_run_writes_nothing_and_shards_large_models(tmp_path, tokenizer_folder):
    sources = save_tiny_source_models(tmp_path / "sources", tokenizer_folder)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "build",
            "--llm",
            str(sources["llm"]),
            "--vision",
            str(sources["siglip"]),
            "--audio",
            str(sources["whisper"]),
            "--output-dir",
            str(tmp_path / "never"),
            "--audio-conv-kernel",
            "4",
            "--max-shard-size",
            "4MB",
            "--dtype",
            "float32",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not (tmp_path / "never").exists()
    plan = json.loads(completed.stdout.strip().splitlines()[-1])
    # The tiny sources' towers cut at their feature layer (-2 of 2 layers): 25,696 fewer than whole towers.
    assert plan["parameters"]["total"] == 4_225_664
    # 4.23M float32 parameters = 16.9 MB: five shards of at most 4 MB and an index.
    assert "model.safetensors.index.json" in plan["files"] and "model-00005-of-00005.safetensors" in plan["files"]


def test_build_needs_a_preset_or_all_parts(capsys):
    from mmmmodal_hf.conversion.build import main

    with pytest.raises(SystemExit):
        main(["--llm", "x", "--output-dir", "y"])
    assert "missing: vision, audio" in capsys.readouterr().err


ROLES = ["llm", "vision", "audio"]


@pytest.fixture(scope="module")
def unreadable_parts(tmp_path_factory, tokenizer_folder) -> list[tuple[dict, Path]]:
    """`mmmmodal build` with each part in turn a Hub id that is not there (offline), each in a folder of its own."""
    root = tmp_path_factory.mktemp("unreadable")
    sources = {k: str(v) for k, v in save_tiny_source_models(root / "sources", tokenizer_folder).items()}
    cases, folders = [], [tmp_path_factory.mktemp(role) for role in ROLES]
    for role in ROLES:
        parts = {
            "llm": sources["llm"],
            "vision": sources["siglip"],
            "audio": sources["whisper"],
            role: "someone/absent",
        }
        cases.append(
            ["build", "--output-dir", "never"]
            + [item for name, source in parts.items() for item in (f"--{name}", source)]
        )
    return list(zip(run_cases(list(zip(cases, folders)), {**os.environ, "HF_HUB_OFFLINE": "1"}), folders))


@pytest.mark.parametrize("role", ROLES)
def test_a_part_that_cannot_be_read_is_named_in_one_line(role, unreadable_parts):
    """Offline, or a typo: the part is named before anything is built, without a traceback."""
    outcome, folder = unreadable_parts[ROLES.index(role)]
    assert outcome["status"] == 1 and "Traceback" not in outcome["stderr"]
    # The last line (the tiny SigLIP config's own notices may come before it, when it is read first).
    last = outcome["stderr"].strip().splitlines()[-1]
    assert last.startswith(f"mmmmodal build: cannot read --{role} someone/absent: "), outcome["stderr"]
    assert "mmmmodal build:" not in outcome["stderr"].replace(last, "")
    assert not (folder / "never").exists()


def test_the_readmes_build_command_by_hub_ids_gives_the_local_build(tmp_path, tokenizer_folder):
    """`mmmmodal build --preset tinyllama --output-dir ...` as the README gives it: the preset's LM, SigLIP and
    Whisper fetched by id (from a stand-in for the Hub on 127.0.0.1, tests/hub_double.py) compose the checkpoint
    a build from local folders composes; only the new projectors are drawn afresh."""
    sources = save_tiny_source_models(tmp_path / "sources", tokenizer_folder)
    local = build_checkpoint(
        str(sources["llm"]), str(sources["siglip"]), str(sources["whisper"]), tmp_path / "local",
        dtype="float32", audio_conv_kernel=4, credit_names=CREDITS, repo_id=PRESETS["tinyllama"]["repo_id"],
    ).output_dir  # fmt: skip
    repos = {PRESETS["tinyllama"][part]: sources[name] for part, name in CREDITS_SOURCES.items()}
    with hub_serving(repos) as (endpoint, _):
        completed = subprocess.run(
            [sys.executable, "-m", "mmmmodal_hf.cli", "build", "--preset", "tinyllama", "--output-dir"]
            + [str(tmp_path / "by_id"), "--dtype", "float32", "--audio-conv-kernel", "4"],
            capture_output=True,
            text=True,
            timeout=300,
            env=reaching(endpoint, tmp_path / "hf_home"),
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    by_id, built = load_file(tmp_path / "by_id" / "model.safetensors"), load_file(local / "model.safetensors")
    assert by_id.keys() == built.keys()
    assert all(torch.equal(by_id[key], built[key]) for key in built if "projector" not in key)
    for name in ("processor_config.json", "tokenizer.json", "README.md"):
        assert (tmp_path / "by_id" / name).read_text() == (local / name).read_text(), name

    def without_sources(config: dict) -> dict:  # each part's `_name_or_path`: the Hub id here, a folder there
        return {k: without_sources(v) if isinstance(v, dict) else v for k, v in config.items() if k != "_name_or_path"}

    by_id_config, local_config = (
        json.loads((folder / "config.json").read_text()) for folder in (tmp_path / "by_id", local)
    )
    assert without_sources(by_id_config) == without_sources(local_config)
    assert by_id_config["audio_config"]["_name_or_path"] == PRESETS["tinyllama"]["audio"]


def test_a_part_of_another_kind_or_a_bad_number_is_named_in_one_line(tmp_path, tokenizer_folder, capsys):
    """A Whisper folder given as the LM (a traceback from deep in the assembly before), a SigLIP folder as the audio,
    a stride of 0, an unreadable shard size: refused before anything is built."""
    from mmmmodal_hf.conversion.build import main

    sources = {k: str(v) for k, v in save_tiny_source_models(tmp_path / "sources", tokenizer_folder).items()}
    parts = {"llm": sources["llm"], "vision": sources["siglip"], "audio": sources["whisper"]}
    wrong = {
        "llm": (sources["whisper"], "whisper", "a causal language model"),
        "vision": (sources["whisper"], "whisper", "a SigLIP model"),
        "audio": (sources["siglip"], "siglip", "a Whisper model"),
    }
    for role, (source, model_type, kind) in wrong.items():
        given = {**parts, role: source}
        code = main(["--output-dir", str(tmp_path / "never"), *(a for n, s in given.items() for a in (f"--{n}", s))])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and last == f"mmmmodal build: --{role} {source} is a {model_type} model; it must be {kind}"
    flags = [a for n, s in parts.items() for a in (f"--{n}", s)]
    for bad, said in (
        (["--audio-conv-stride", "0"], "argument --audio-conv-stride: must be a positive number; got 0"),
        (["--max-shard-size", "2 gigs"], "argument --max-shard-size: a size such as 2GB or 500MB (units: TB, GB, "
         "MB, KB); got '2 gigs'"),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--output-dir", str(tmp_path / "never"), *flags, *bad])
        assert capsys.readouterr().err.strip().endswith(said)
    assert not (tmp_path / "never").exists()
