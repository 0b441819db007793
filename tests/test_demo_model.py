"""The demo's own remote-code model (`demo/modeling_mmmmodal_demo.py`): its two additions, and its folders.

The published model holds neither addition; the demo's folders carry this module and load with
`AutoModel` + `trust_remote_code` wherever the package is not installed.
"""

import copy
import json

import pytest
import torch

from mmmmodal_hf.demo.remote_code import MMMModalDemoConfig, write_demo_code
from mmmmodal_hf.modeling_mmmmodal import CACHE_NAME

from fresh_process import fresh_process_chat, load_in_fresh_process, write_fresh_process_media
from tiny_parts import random_clip, random_image, tiny_audio_config, tiny_model, tiny_vision_config, two_turn_chat


def test_previous_token_mix_starts_at_zero_and_then_changes_the_logits(model, mixed_model, session_processor):
    fresh = tiny_model(session_processor, previous_token_mix=1)
    hidden_size = fresh.config.text_config.hidden_size
    assert fresh.model.previous_token_mix.weight.shape == (hidden_size, hidden_size)
    assert mixed_model.model.previous_token_mix.weight.shape == (hidden_size, 3 * hidden_size)
    assert not fresh.model.previous_token_mix.weight.any()
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["model.previous_token_mix.weight"] and not unexpected
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    mixed_model = copy.deepcopy(mixed_model)
    assert mixed_model.load_state_dict(model.state_dict(), strict=False).missing_keys == missing  # its maps stay
    with torch.no_grad():
        plain = model(**inputs).logits
        torch.testing.assert_close(fresh(**inputs).logits, plain)
        mixed = mixed_model(**inputs).logits
    # The first token has no previous one: the map changes every position but it.
    torch.testing.assert_close(mixed[:, 0], plain[:, 0])
    assert not torch.allclose(mixed[:, 1:], plain[:, 1:], atol=1e-3)


def test_previous_token_mix_continuing_a_cache_needs_the_previous_tokens(mixed_model, session_processor):
    inputs = session_processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        prefill = mixed_model(**inputs, use_cache=True)
        token = prefill.logits[:, -1:].argmax(-1)
        with pytest.raises(ValueError, match="pass previous_token_ids"):
            mixed_model(input_ids=token, cache=getattr(prefill, CACHE_NAME))
        with pytest.raises(ValueError, match="previous_token_ids has shape"):
            mixed_model(input_ids=token, cache=getattr(prefill, CACHE_NAME), previous_token_ids=inputs["input_ids"])
        with pytest.raises(ValueError, match="pass input_ids"):
            mixed_model(inputs_embeds=torch.zeros(1, 3, mixed_model.config.text_config.hidden_size))


def test_media_index_embeddings_number_each_medium_within_its_sample(indexed_model, session_processor):
    samples = [
        ("[INST] <image> <audio> then <image> [/INST]", [random_image(20), random_image(21)], [random_clip(22)]),
        ("[INST] <audio> <image> <audio> [/INST]", [random_image(23)], [random_clip(24), random_clip(25, 1.4)]),
    ]
    batch = session_processor(
        text=[s[0] for s in samples],
        images=[s[1] for s in samples],
        audio=[s[2] for s in samples],
        return_tensors="pt",
    )
    seen = {}
    hook = indexed_model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            indexed_model(**batch)
            image_features = indexed_model.get_image_features(batch["pixel_values"]).pooler_output
            audio_features = indexed_model.get_audio_features(
                batch["input_features"], batch["input_features_mask"]
            ).pooler_output
    finally:
        hook.remove()
    inner = indexed_model.model
    for token_id, features, projector, numbers in (
        (session_processor.image_token_id, image_features, inner.image_projector, [[1, 2], [1]]),
        # The 1.4 s clip spans two windows but is one medium: its slots all carry number 2.
        (session_processor.audio_token_id, audio_features, inner.audio_projector, [[1], [1, 2]]),
    ):
        slots = batch["input_ids"] == token_id
        added = seen["embeds"][slots] - features.reshape(-1, features.shape[-1])
        expected_numbers = []
        for row, row_numbers in enumerate(numbers):
            runs = torch.diff(slots[row].long(), prepend=torch.zeros(1, dtype=torch.long)) == 1
            assert int(runs.sum()) == len(row_numbers), f"sample {row + 1}: one run of slots per medium"
            run_of_slot = torch.cumsum(runs.long(), 0)[slots[row]] - 1
            expected_numbers += [row_numbers[run] for run in run_of_slot.tolist()]
        expected = projector.index_embedding.weight[torch.tensor(expected_numbers) - 1]
        torch.testing.assert_close(added, expected, atol=1e-5, rtol=1e-5)


def test_more_media_than_media_index_embeddings_is_a_clear_error(indexed_model, session_processor):
    images = [random_image(30 + k) for k in range(5)]
    batch = session_processor(text="[INST] " + "<image> " * 5 + "[/INST]", images=images, return_tensors="pt")
    with pytest.raises(ValueError, match=r"at most 4 images per conversation.*sample 1: 5"):
        indexed_model(**batch)


@pytest.mark.parametrize("name", ["media_index_embeddings", "previous_token_mix"])
def test_negative_counts_are_refused(name):
    with pytest.raises(ValueError, match=rf"{name}=-1: expected 0 \(none\) or more"):
        MMMModalDemoConfig(vision_config=tiny_vision_config(), audio_config=tiny_audio_config(), **{name: -1})


def test_a_demo_folder_loads_where_the_package_is_not_installed(indexed_model, session_processor, tmp_path):
    """Saved with its own module beside the Hub modules, the demo's model loads through its `auto_map`."""
    folder = tmp_path / "demo_model"
    model = tiny_model(session_processor, media_index_embeddings=4, previous_token_mix=3)
    with torch.no_grad():
        model.model.previous_token_mix.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
    model.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    write_demo_code(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mmmmodal_demo"
    assert config["auto_map"]["AutoModel"] == "modeling_mmmmodal_demo.MMMModalDemoForConditionalGeneration"
    assert {"modeling_mmmmodal_demo.py", "modeling_mmmmodal.py", "configuration_mmmmodal.py"} <= {
        p.name for p in folder.iterdir()
    }
    results = load_in_fresh_process(folder, write_fresh_process_media(tmp_path))
    inputs = session_processor.apply_chat_template(
        fresh_process_chat(tmp_path), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    torch.testing.assert_close(results["auto_model_logits"], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(results["auto_model_generated"], generated)


def test_the_published_model_holds_none_of_the_demo(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "media_index_embeddings" not in config and "previous_token_mix" not in config
    assert not [key for key in model.state_dict() if "index_embedding" in key or "previous_token" in key]
    assert not (tmp_path / "modeling_mmmmodal_demo.py").exists()


def test_training_a_folder_with_its_own_code_asks_nothing(session_processor, tmp_path):
    """`mmmmodal train` trusts the folder it is told to train: a demo folder (its own model code) trains without
    transformers' "Do you wish to run the custom code?" (which waited 15 s per question in a terminal) and without
    a https://hf.co/ link made from the local path."""
    import os
    import subprocess
    import sys

    from tiny_parts import write_tiny_dataset

    folder = tmp_path / "demo_model"
    tiny_model(session_processor, media_index_embeddings=4).save_pretrained(folder)
    session_processor.save_pretrained(folder)
    write_demo_code(folder)
    data = write_tiny_dataset(tmp_path / "data", rows=4)
    completed = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "train", "--stage", "finetune", "--model", str(folder),
         "--data", str(data), "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--report_to", "none",
         "--save_strategy", "no", "--per_device_train_batch_size", "2"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    said = completed.stdout + completed.stderr
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "custom code" not in said and "hf.co" not in said, said[-2000:]
    assert "Setting accelerator to CPU" not in said  # DeepSpeed, told it runs on the CPU, says nothing of it
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_type"] == "mmmmodal_demo" and (tmp_path / "run" / "modeling_mmmmodal_demo.py").is_file()


def test_chat_and_page_say_in_one_line_what_the_demo_model_knows(session_processor, saved_folder, tmp_path):
    import subprocess
    import sys

    from mmmmodal_hf.web import build_app

    folder = tmp_path / "demo_model"
    demo = tiny_model(session_processor, media_index_embeddings=4)
    demo.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    write_demo_code(folder)
    notice = MMMModalDemoConfig.chat_notice
    assert json.loads((folder / "config.json").read_text())["chat_notice"] == notice
    for model_folder, said in ((folder, notice), (saved_folder, None)):
        completed = subprocess.run(
            [sys.executable, "-m", "mmmmodal_hf.cli", "chat", str(model_folder), "-p", "Apa?", "--max-new-tokens", "2"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-2000:]
        shown = [line for line in completed.stderr.splitlines() if line.startswith("This is the demo's model")]
        assert shown == ([said] if said else []), completed.stderr[-2000:]
    page = build_app(demo, session_processor).config
    texts = [c["props"].get("value") for c in page["components"] if c["props"].get("elem_id") == "notice"]
    assert texts == [f"*{notice}*"]
