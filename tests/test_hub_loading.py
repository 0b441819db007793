"""A saved folder is a Hub repo: it loads in a fresh process that cannot import mmmmodal_hf."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tiny_parts import random_clip, random_image

HUB_MODULES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py", "media_mmmmodal.py")

# Runs in a child process. `mmmmodal_hf` is made unimportable, so only the code in the folder can serve.
FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, importlib.abc

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmmmodal_hf" or name.startswith("mmmmodal_hf."):
                raise ImportError("mmmmodal_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockPackage())
    import numpy as np, torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

    folder, media_folder, out_file = sys.argv[1:4]
    try:
        import mmmmodal_hf  # noqa: F401
        raise SystemExit("mmmmodal_hf should not be importable here")
    except ImportError:
        pass

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    chat = [
        {"role": "user", "content": [
            {"type": "image", "path": f"{media_folder}/a.png"},
            {"type": "audio", "path": f"{media_folder}/a.wav"},
            {"type": "text", "text": "Apa ini?"}]},
        {"role": "assistant", "content": "Bulatan merah."},
        {"role": "user", "content": [{"type": "image", "path": f"{media_folder}/b.png"}, {"type": "text", "text": "Dan ini?"}]},
    ]
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    results = {"input_ids": inputs["input_ids"]}
    for name, auto_class in (("auto_model", AutoModel), ("auto_causal_lm", AutoModelForCausalLM)):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__name__ == "MMMModalForConditionalGeneration", type(model)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            results[f"{name}_logits"] = model(**inputs).logits
            results[f"{name}_generated"] = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    results["processor_module"] = torch.tensor([type(processor).__module__.startswith("transformers_modules.")])
    save_file({k: v.contiguous() for k, v in results.items()}, out_file)
    """
)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, model, session_processor):
    folder = tmp_path_factory.mktemp("hub_repo")
    model.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    return folder


def test_folder_holds_code_auto_map_and_one_processor_config(saved_folder):
    names = set(os.listdir(saved_folder))
    assert set(HUB_MODULES) <= names
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "tokenizer.json"} <= names
    assert "preprocessor_config.json" not in names, "both feature processors belong in processor_config.json"
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["model_type"] == "mmmmodal"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mmmmodal.MMMModalConfig",
        "AutoModel": "modeling_mmmmodal.MMMModalForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_mmmmodal.MMMModalForConditionalGeneration",
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


def test_fresh_process_loads_with_auto_classes_and_matches(saved_folder, tmp_path, model, session_processor):
    random_image(1).save(tmp_path / "a.png")
    random_image(2).save(tmp_path / "b.png")
    import soundfile

    soundfile.write(tmp_path / "a.wav", random_clip(3), 16000)
    out_file = tmp_path / "results.safetensors"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(saved_folder), str(tmp_path), str(out_file)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = load_file(out_file)
    assert results["processor_module"].item()

    # The same conversation, here, with the in-memory model and processor.
    chat = [
        {"role": "user", "content": [
            {"type": "image", "path": str(tmp_path / "a.png")},
            {"type": "audio", "path": str(tmp_path / "a.wav")},
            {"type": "text", "text": "Apa ini?"}]},
        {"role": "assistant", "content": "Bulatan merah."},
        {"role": "user", "content": [{"type": "image", "path": str(tmp_path / "b.png")}, {"type": "text", "text": "Dan ini?"}]},
    ]
    inputs = session_processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(results["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    for name in ("auto_model", "auto_causal_lm"):
        assert torch.equal(results[f"{name}_logits"], logits), name
        assert torch.equal(results[f"{name}_generated"], generated), name


def test_local_folder_loads_in_process_without_trust_remote_code(saved_folder, model):
    from transformers import AutoModel, AutoProcessor

    import mmmmodal_hf

    loaded = AutoModel.from_pretrained(saved_folder)
    assert isinstance(loaded, mmmmodal_hf.MMMModalForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(saved_folder), mmmmodal_hf.MMMModalProcessor)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
