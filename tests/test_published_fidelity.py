"""A released checkpoint converted by `mmmmodal convert` computes exactly what the published code computed.

The reference is `published_reference.PublishedMMMModal`: the published inference path on the
checkpoint in its released layout (full SigLIP, full Whisper, the LM, the two projectors, the tags
at 32000-32003), written from the published code. Ours is the converted folder loaded as a Hub user
loads it, `AutoModel` + `AutoProcessor` with `trust_remote_code`.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from mmmmodal_hf import MMMModalForConditionalGeneration, MMMModalProcessor

from fresh_process import run_in_fresh_process
from published_reference import PublishedMMMModal, write_published_checkpoint
from tiny_parts import random_clip, random_image, save_tiny_source_models

PUBLISHED_VOCAB = 32004
# Two images and two clips over two turns, one clip recorded at 44.1 kHz: the published data's text form.
PROMPT = (
    "[INST] <image> </image>\n<audio> </audio>\nApa warna bentuk dalam gambar ini? [/INST]Merah.</s>"
    "[INST] <image> </image>\n<audio> </audio>\nAnd which clip is higher? [/INST]"
)


@pytest.fixture(scope="module")
def released(tmp_path_factory, tokenizer_folder):
    root = tmp_path_factory.mktemp("released")
    write_published_checkpoint(root / "published", tokenizer_folder, projector_scale=4.0)
    sources = save_tiny_source_models(root / "sources", tokenizer_folder)
    media = root / "media"
    media.mkdir()
    random_image(11, size=(40, 30)).save(media / "first.png")
    random_image(12, size=(25, 50)).save(media / "second.jpg")
    soundfile.write(media / "low.wav", random_clip(13, seconds=0.7), 16000)
    soundfile.write(media / "high.wav", random_clip(14, seconds=0.5, rate=44100), 44100)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "convert",
            str(root / "published"),
            "--output-dir",
            str(root / "converted"),
            "--vision-processor",
            str(sources["siglip"]),
            "--audio-processor",
            str(sources["whisper"]),
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reference = PublishedMMMModal(root / "published", sources["siglip"], sources["whisper"])
    images = [media / "first.png", media / "second.jpg"]
    clips = [media / "low.wav", media / "high.wav"]
    return root / "converted", reference, images, clips


# Ours, as a Hub user runs it: a process that cannot import mmmmodal_hf, so the folder's own code serves.
OURS_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor

    folder, work, out_file = sys.argv[1:4]
    request = json.loads(open(f"{work}/request.json").read())
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    inputs = processor(text=request["prompt"], images=request["images"], audio=request["clips"], return_tensors="pt")
    steps = request["steps"]
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    chat = processor.apply_chat_template(request["chat"], add_generation_prompt=True, tokenize=True, return_dict=True)
    save_file({
        "input_ids": inputs["input_ids"], "logits": logits.contiguous(),
        "generated": generated[:, inputs["input_ids"].shape[1]:].contiguous(),
        "chat_input_ids": torch.tensor(chat["input_ids"]),
    }, out_file)
    """
)
STEPS = 8


def two_turn_chat(images, clips):
    """PROMPT's conversation as content blocks."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(images[0])},
                {"type": "audio", "path": str(clips[0])},
                {"type": "text", "text": "Apa warna bentuk dalam gambar ini?"},
            ],
        },
        {"role": "assistant", "content": "Merah."},
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(images[1])},
                {"type": "audio", "path": str(clips[1])},
                {"type": "text", "text": "And which clip is higher?"},
            ],
        },
    ]


@pytest.fixture(scope="module")
def ours(released, tmp_path_factory):
    folder, _, images, clips = released
    work = tmp_path_factory.mktemp("ours")
    request = {
        "prompt": PROMPT,
        "images": [str(p) for p in images],
        "clips": [str(p) for p in clips],
        "steps": STEPS,
        "chat": two_turn_chat(images, clips),
    }
    (work / "request.json").write_text(json.dumps(request))
    return run_in_fresh_process(OURS_SCRIPT, folder, work)


@pytest.fixture(scope="module")
def processor(released):
    return MMMModalProcessor.from_pretrained(released[0])


def test_same_positions_same_logits_same_greedy_tokens(released, ours, processor):
    _, reference, images, clips = released
    published_ids, embeddings = reference.inputs_embeds(PROMPT, images, clips)
    ids = ours["input_ids"][0].tolist()
    slots = (processor.image_token_id, processor.audio_token_id)

    assert len(ids) == embeddings.shape[1], "one position per published position"
    assert [token for token in ids if token not in slots] == published_ids, "the text tokens are the published ones"
    assert published_ids[0] == processor.tokenizer.bos_token_id != published_ids[1]
    text = torch.tensor([token not in slots for token in ids])
    assert int((~text).sum()) == embeddings.shape[1] - len(published_ids) > 0

    expected = reference.logits(embeddings)[0]
    assert torch.equal(ours["logits"][0][text, :PUBLISHED_VOCAB], expected[text]), "logits differ at a text position"
    assert ours["generated"][0].tolist() == reference.greedy(embeddings, STEPS)


def test_the_chat_template_gives_the_published_layout(released, ours, processor):
    """Content blocks render as the published data's tags, and the slots go right after each opening tag."""
    _, reference, images, clips = released
    rendered = processor.apply_chat_template(two_turn_chat(images, clips), add_generation_prompt=True, tokenize=False)
    # The rendered text starts with its own <s>: the published tokenizer, told not to add another, gives these.
    published_ids = reference.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    ids = ours["chat_input_ids"][0].tolist()
    slots = (processor.image_token_id, processor.audio_token_id)
    assert [token for token in ids if token not in slots] == published_ids
    tags = [position for position, token in enumerate(ids) if token in (32000, 32002)]
    assert len(tags) == 4 and all(ids[position + 1] in slots for position in tags)
    tails = {tuple(ids[p + 1 : p + 3]) for p in range(len(ids) - 2) if ids[p] in slots and ids[p + 1] not in slots}
    assert {tuple(processor.tokenizer.convert_ids_to_tokens(list(t))) for t in tails} == {
        ("▁", "</image>"),
        ("▁", "</audio>"),
    }


@pytest.fixture(scope="module")
def converted(released):
    folder = released[0]
    return MMMModalForConditionalGeneration.from_pretrained(folder).eval(), MMMModalProcessor.from_pretrained(folder)


def test_slot_tokens_are_never_generated(released, converted):
    """Even where a slot token's logit is the highest, greedy decoding skips it: slots are inputs only."""
    _, _, images, _ = released
    model, processor = converted
    assert set(model.generation_config.suppress_tokens) >= {processor.image_token_id, processor.audio_token_id}
    inputs = processor(text="[INST] <image> </image> Apa ini? [/INST]", images=[str(images[0])], return_tensors="pt")
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    head = model.lm_head.weight
    saved = head[[processor.image_token_id, processor.audio_token_id]].clone()
    try:
        with torch.no_grad():
            head[processor.image_token_id] = head[plain[0, -4]] * 50  # far above the token it would pick
            head[processor.audio_token_id] = head[plain[0, -3]] * 50
            logits = model(**inputs).logits[0, -1]
            assert int(logits.argmax()) == processor.image_token_id
            boosted = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    finally:
        with torch.no_grad():
            head[[processor.image_token_id, processor.audio_token_id]] = saved
    new = boosted[0, inputs["input_ids"].shape[1] :].tolist()
    assert not {processor.image_token_id, processor.audio_token_id} & set(new), new


def test_plain_text_prompts_start_with_one_bos_as_the_tokenizer_gives(converted):
    _, processor = converted
    tokenizer = processor.tokenizer
    plain = processor(text="[INST] Apa khabar? [/INST]")["input_ids"][0]
    assert plain == tokenizer("[INST] Apa khabar? [/INST]")["input_ids"] and plain[:2] == [1, plain[1]] != [1, 1]
    written = processor(text="<s>[INST] Apa khabar? [/INST]")["input_ids"][0]
    assert written == tokenizer("<s>[INST] Apa khabar? [/INST]", add_special_tokens=False)["input_ids"]
    assert written[0] == tokenizer.bos_token_id != written[1]
    # A batch may mix both; each row is what it would be alone (padded on the left).
    batch = processor(text=["<s>[INST] Apa khabar? [/INST]", "[INST] Hi [/INST]"], return_tensors="np")
    rows = [row[mask.astype(bool)].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert rows == [written, tokenizer("[INST] Hi [/INST]")["input_ids"]]
    assert processor(text="[INST] Hi [/INST]", add_special_tokens=False)["input_ids"][0][0] != 1
    assert np.all(batch["attention_mask"][1, : len(written) - len(rows[1])] == 0)
