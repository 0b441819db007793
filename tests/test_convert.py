"""`mmmmodal convert` on a tiny checkpoint written in the published (mm_llms) layout."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmmmodal_hf import MMMModalForConditionalGeneration
from mmmmodal_hf.conversion.build import PRESETS
from mmmmodal_hf.conversion.convert import UnmappedKeys, convert_checkpoint
from mmmmodal_hf.conversion.verify import check_folder_loads

from hub_double import hub_serving, reaching
from published_reference import write_published_checkpoint
from tiny_parts import save_tiny_source_models


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer_folder):
    root = tmp_path_factory.mktemp("convert")
    published = write_published_checkpoint(root / "published", tokenizer_folder)
    sources = save_tiny_source_models(root / "sources", tokenizer_folder)
    report = convert_checkpoint(
        str(root / "published"),
        root / "converted",
        str(sources["siglip"]),
        str(sources["whisper"]),
        repo_id="someone/converted",
        dtype="float32",
        credit_names={"llm": "mesolitica/malaysian-tinyllama-1.1b-16k-instructions-v3"},
    )
    return published, report, root


def test_every_weight_lands_where_it_belongs(converted):
    published, report, root = converted
    ours = load_file(root / "converted" / "model.safetensors")
    for key, target in report.mapped.items():
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[target][:32004], published[key]), key
            assert torch.allclose(ours[target][32004:], published[key].mean(0).expand(2, -1), atol=1e-6), key
        else:
            assert torch.equal(ours[target], published[key]), key
    assert set(report.mapped.values()) == set(ours), "every tensor of our layout comes from the source"


def test_dropped_keys_are_exactly_the_text_tower_the_decoder_and_what_follows_the_feature_layer(converted):
    published, report, _ = converted
    expected = {k for k in published if k.startswith(("image_encoder.text_model.", "audio_encoder.decoder."))}
    expected |= {"image_encoder.logit_scale", "image_encoder.logit_bias"}
    # Feature layer -2 of 2-layer towers: layer 1, the final norms and SigLIP's pooling head are never used.
    after_feature_layer = {
        k
        for k in published
        if k.startswith(("image_encoder.vision_model.encoder.layers.1.", "audio_encoder.encoder.layers.1."))
        or k.startswith(("image_encoder.vision_model.post_layernorm.", "image_encoder.vision_model.head."))
        or k.startswith("audio_encoder.encoder.layer_norm.")
    }
    assert after_feature_layer
    assert set(report.dropped) == expected | after_feature_layer
    assert {report.dropped[k] for k in after_feature_layer} == {"encoder parts after the feature layer"}
    assert report.unmapped == [] and report.missing == []
    assert set(report.dropped) | set(report.mapped) == set(published), "no key is silently lost"


def test_projectors_compute_the_published_math(converted):
    published, _, root = converted
    model = MMMModalForConditionalGeneration.from_pretrained(root / "converted").eval()
    image_features, audio_features = torch.randn(3, 16, 32), torch.randn(2, 50, 32)
    p = published
    with torch.no_grad():
        expected_image = nn.functional.linear(
            nn.functional.gelu(
                nn.functional.linear(
                    image_features, p["image_projector.linear_1.weight"], p["image_projector.linear_1.bias"]
                )
            ),
            p["image_projector.linear_2.weight"],
            p["image_projector.linear_2.bias"],
        )
        conv = nn.functional.conv1d(
            audio_features.transpose(1, 2),
            p["audio_projector.linear_1.weight"],
            p["audio_projector.linear_1.bias"],
            stride=3,
        ).transpose(1, 2)
        expected_audio = nn.functional.linear(
            nn.functional.gelu(conv), p["audio_projector.linear_2.weight"], p["audio_projector.linear_2.bias"]
        )
        torch.testing.assert_close(model.model.image_projector(image_features), expected_image)
        torch.testing.assert_close(model.model.audio_projector(audio_features), expected_audio)
    assert expected_audio.shape[1] == (50 - 40) // 3 + 1


def test_converted_model_loads_and_generates(converted):
    _, _, root = converted
    loaded = check_folder_loads(root / "converted")
    assert loaded["new_tokens"] == 2
    config = json.loads((root / "converted" / "config.json").read_text())
    assert (config["image_start_token_id"], config["audio_end_token_id"]) == (32000, 32003)
    assert (config["image_token_id"], config["audio_token_id"]) == (32004, 32005)
    # The context where the processor reads it, so a video that does not fit is named before anything is encoded.
    tokenizer_config = json.loads((root / "converted" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == config["text_config"]["max_position_embeddings"]


def test_unknown_keys_stop_the_conversion(tmp_path, tokenizer_folder):
    published = write_published_checkpoint(tmp_path / "published", tokenizer_folder)
    save_file({"mystery_adapter.weight": torch.zeros(2)}, tmp_path / "published" / "extra.safetensors")
    with pytest.raises(UnmappedKeys, match="mystery_adapter.weight"):
        convert_checkpoint(str(tmp_path / "published"), tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
    assert published


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mm_llms"}))
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    completed = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "convert", str(folder), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "only pickled weights (pytorch_model.bin)" in completed.stderr and "refused" in completed.stderr


def test_the_readmes_convert_command_by_hub_id_gives_the_local_conversion(converted, tmp_path):
    """`mmmmodal convert mesolitica/malaysian-tinyllama-1.1b-mmmmodal --output-dir ...` as the README gives it: the
    released checkpoint and the default SigLIP and Whisper processors fetched by id (from a stand-in for the Hub on
    127.0.0.1, tests/hub_double.py) convert to the very weights a local conversion writes."""
    _, _, root = converted
    repos = {
        "mesolitica/malaysian-tinyllama-1.1b-mmmmodal": root / "published",
        PRESETS["tinyllama"]["vision"]: root / "sources" / "siglip",
        PRESETS["tinyllama"]["audio"]: root / "sources" / "whisper",
    }
    with hub_serving(repos) as (endpoint, _):
        completed = subprocess.run(
            [sys.executable, "-m", "mmmmodal_hf.cli", "convert", "mesolitica/malaysian-tinyllama-1.1b-mmmmodal"]
            + ["--output-dir", str(tmp_path / "by_id"), "--dtype", "float32"],
            capture_output=True,
            text=True,
            timeout=300,
            env=reaching(endpoint, tmp_path / "hf_home"),
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    by_id, local = (
        load_file(tmp_path / "by_id" / "model.safetensors"),
        load_file(root / "converted" / "model.safetensors"),
    )
    assert by_id.keys() == local.keys() and all(torch.equal(by_id[key], local[key]) for key in local)
    for name in ("config.json", "processor_config.json", "tokenizer.json"):
        assert (tmp_path / "by_id" / name).read_text() == (root / "converted" / name).read_text(), name
