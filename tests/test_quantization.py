"""bitsandbytes 8-bit and 4-bit loading through `AutoModel`, on this CPU (bitsandbytes' CPU backend).

Every width is a multiple of 64, as bitsandbytes' 4-bit blocks want. By default only the language
model's layers are quantized; the towers, projectors and LM head stay in the loading dtype.
"""

import pytest
import torch
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from transformers import AutoModel, BitsAndBytesConfig

from tiny_parts import random_clip, random_image, tiny_audio_config, tiny_model, tiny_text_config, tiny_vision_config

QUANTIZED = {"8bit": Linear8bitLt, "4bit": Linear4bit}


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory, session_processor):
    folder = tmp_path_factory.mktemp("wide")
    processor = session_processor
    model = tiny_model(
        processor,
        vision_config=tiny_vision_config(hidden_size=64, intermediate_size=128),
        audio_config=tiny_audio_config(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128),
        text_config=tiny_text_config(len(processor.tokenizer), hidden_size=128, intermediate_size=256),
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = processor(
        text="[INST] <image> </image>\n<audio> </audio>\nApa warna ini? [/INST]",
        images=[random_image(1)],
        audio=[random_clip(2)],
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    return folder, inputs, logits


def quantization_config(bits: str, **overrides) -> BitsAndBytesConfig:
    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **overrides)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, **overrides)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_loading_keeps_the_logits_and_generates(wide_folder, bits):
    folder, inputs, expected = wide_folder
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, quantization_config=quantization_config(bits))
    model.eval()
    inner = model.model
    language_linears = [m for n, m in inner.language_model.named_modules() if n.endswith(("_proj",))]
    assert language_linears and all(isinstance(m, QUANTIZED[bits]) for m in language_linears)
    for part in (inner.vision_tower, inner.audio_tower, inner.image_projector, inner.audio_projector, model.lm_head):
        assert not any(isinstance(m, QUANTIZED[bits]) for m in part.modules()), type(part).__name__
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    similarity = torch.nn.functional.cosine_similarity(logits.flatten(), expected.flatten(), dim=0)
    assert similarity > (0.9999 if bits == "8bit" else 0.98), similarity
    last = logits[0, -1].topk(5).indices
    assert int(expected[0, -1].argmax()) in last.tolist()
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5


def test_skip_modules_given_by_the_user_are_kept(wide_folder):
    folder, inputs, _ = wide_folder
    config = quantization_config("8bit", llm_int8_skip_modules=["lm_head"])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, quantization_config=config)
    assert isinstance(model.model.image_projector.linear_1, Linear8bitLt)
    assert not isinstance(model.lm_head, Linear8bitLt)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
