"""A saved folder is a Hub repo: it loads in a fresh process that cannot import mmmmodal_hf."""

import json
import os

import torch

from fresh_process import fresh_process_chat, load_in_fresh_process, write_fresh_process_media
from hub_double import hub_serving, reaching

HUB_MODULES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py", "media_mmmmodal.py")


def test_folder_holds_code_auto_map_and_one_processor_config(saved_folder):
    names = set(os.listdir(saved_folder))
    assert set(HUB_MODULES) <= names
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    } <= names
    assert "preprocessor_config.json" not in names, "both feature processors belong in processor_config.json"
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["model_type"] == "mmmmodal"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mmmmodal.MMMModalConfig",
        "AutoModel": "modeling_mmmmodal.MMMModalForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_mmmmodal.MMMModalForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_mmmmodal.MMMModalForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_mmmmodal.MMMModalForConditionalGeneration",
    }
    processor_config = json.loads((saved_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_mmmmodal.MMMModalProcessor"}
    assert {"image_processor", "feature_extractor"} <= set(processor_config)
    assert processor_config["patch_size"] == 8 and processor_config["audio_conv_kernel"] == 4


def test_hub_modules_import_only_installed_libraries_and_each_other(saved_folder):
    for name in HUB_MODULES:
        source = (saved_folder / name).read_text()
        assert "mmmmodal_hf" not in source.replace("mmmmodal_hf import", ""), name
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith("from ."):
                assert stripped.split()[1].lstrip(".") in {m[:-3] for m in HUB_MODULES}, line
            assert not stripped.startswith("from . import"), line


def assert_same_as_here(results: dict, media_folder, model, session_processor) -> None:
    """The child's ids, logits and greedy tokens are those of the in-memory model and processor."""
    assert results["processor_module"].item()
    inputs = session_processor.apply_chat_template(
        fresh_process_chat(media_folder),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert torch.equal(results["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    for name in ("auto_model", "auto_causal_lm"):
        assert torch.equal(results[f"{name}_logits"], logits), name
        assert torch.equal(results[f"{name}_generated"], generated), name


def test_fresh_process_loads_with_auto_classes_and_matches(saved_folder, tmp_path, model, session_processor):
    results = load_in_fresh_process(saved_folder, write_fresh_process_media(tmp_path))
    assert_same_as_here(results, tmp_path, model, session_processor)


def test_a_hub_id_downloads_caches_and_then_loads_offline(saved_folder, tmp_path, model, session_processor):
    """`from_pretrained("mesolitica/...", trust_remote_code=True)` by id: huggingface_hub fetches the repo over HTTP
    (from a stand-in for the Hub on 127.0.0.1, tests/hub_double.py), transformers imports the code from the
    downloaded snapshot; later the same id loads offline from the cache alone."""
    media, repo = write_fresh_process_media(tmp_path), "mesolitica/tiny-mmmmodal"
    with hub_serving({repo: saved_folder}) as (endpoint, hub):
        online = load_in_fresh_process(repo, media, reaching(endpoint, tmp_path / "hf_home"))
    fetched = {line.rsplit("/", 1)[1] for line in hub.requests if line.startswith("GET /mesolitica/tiny-mmmmodal/")}
    assert {"model.safetensors", "chat_template.jinja", *HUB_MODULES} <= fetched, sorted(fetched)
    assert_same_as_here(online, media, model, session_processor)
    # The stand-in is gone: the same id, offline, from the cache alone.
    offline = load_in_fresh_process(repo, media, {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"})
    assert_same_as_here(offline, media, model, session_processor)


def test_local_folder_loads_in_process_without_trust_remote_code(saved_folder, model):
    from transformers import AutoModel, AutoProcessor

    import mmmmodal_hf

    loaded = AutoModel.from_pretrained(saved_folder)
    assert isinstance(loaded, mmmmodal_hf.MMMModalForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(saved_folder), mmmmodal_hf.MMMModalProcessor)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
