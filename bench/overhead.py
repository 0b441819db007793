"""Multimodal overhead: decode against the bare LM, prefill against its parts and the published loop merge.

1. Decode: time per generated token of `MMMModalForConditionalGeneration.generate` after a prompt
   holding 2 images and 2 clips, against the bare `LlamaForCausalLM` (same weights) generating from
   the same merged prefix (`inputs_embeds`). Per token = (t(1 + N tokens) - t(1 token)) / N.
   Goal: at most 1.03x.
2. Prefill: one forward with media against the sum of its parts run separately (SigLIP tower +
   projector, Whisper encoder + projector, LM on already-merged embeddings). Goal: at most 1.05x.
   Also against the published per-item Python-loop merge (bench/published_merge.py), at batch
   sizes 1, 4 and 16 (1 image and 1 clip per sample at the larger batches).

    python bench/overhead.py [--repeats 5] [--new-tokens 32] [--quick]
"""

import argparse

import torch
from common import DEVICE, clip, image, interleaved_medians, parse_arguments, report, small_model, small_processor
from published_merge import published_style_embeddings
from transformers import LlamaForCausalLM


def bare_language_model(model) -> LlamaForCausalLM:
    bare = LlamaForCausalLM(model.config.text_config).to(DEVICE).eval()
    bare.model.load_state_dict(model.model.language_model.state_dict())
    bare.lm_head.load_state_dict(model.lm_head.state_dict())
    bare.generation_config.pad_token_id = model.generation_config.pad_token_id
    return bare


def _scatter(model, inputs) -> torch.Tensor:
    """The merged embeddings the model builds inside `forward` (same public pieces, outside it)."""
    inner = model.model
    embeds = inner.get_input_embeddings()(inputs["input_ids"])
    for key, features, token in (
        (
            "pixel_values",
            lambda: inner.get_image_features(inputs["pixel_values"]).pooler_output,
            model.config.image_token_id,
        ),
        (
            "input_features",
            lambda: inner.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output,
            model.config.audio_token_id,
        ),
    ):
        if key in inputs:
            mask = (inputs["input_ids"] == token).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, features())
    return embeds


def decode(model, processor, bare, repeats: int, new_tokens: int) -> dict:
    inputs = processor(
        text="[INST] <image> <image> <audio> <audio> Describe all four. [/INST]",
        images=[image(1), image(2)],
        audio=[clip(3), clip(4)],
        return_tensors="pt",
    ).to(DEVICE)
    ours_per_token, bare_per_token = seconds_per_token(model, bare, inputs, repeats, new_tokens)
    return {
        "prompt_positions": int(inputs["input_ids"].shape[1]),
        "ours_ms_per_token": 1000 * ours_per_token,
        "bare_lm_ms_per_token": 1000 * bare_per_token,
        "ratio": ours_per_token / bare_per_token,
    }


def seconds_per_token(model, bare, inputs, repeats: int, new_tokens: int) -> tuple[float, float]:
    """Seconds per generated token after `inputs`, of the model and of the bare LM on the same merged prefix:
    (t(1 + N tokens) - t(1 token)) / N, greedy."""
    with torch.no_grad():
        embeds = _scatter(model, inputs)
    fixed = {"do_sample": False}

    def ours(count):
        return lambda: model.generate(**inputs, max_new_tokens=count, min_new_tokens=count, **fixed)

    def theirs(count):
        return lambda: bare.generate(
            inputs_embeds=embeds,
            attention_mask=inputs["attention_mask"],
            max_new_tokens=count,
            min_new_tokens=count,
            **fixed,
        )

    with torch.no_grad():
        times = interleaved_medians(
            {
                "ours_1": ours(1),
                "ours_n": ours(1 + new_tokens),
                "bare_1": theirs(1),
                "bare_n": theirs(1 + new_tokens),
            },
            repeats=repeats,
        )
    return (times["ours_n"] - times["ours_1"]) / new_tokens, (times["bare_n"] - times["bare_1"]) / new_tokens


def prefill(model, processor, batch: int, repeats: int) -> dict:
    window = processor.feature_extractor.chunk_length  # the published merge takes one window per clip
    if batch == 1:
        texts, images, clips = (
            ["[INST] <image> <image> <audio> <audio> Describe. [/INST]"],
            [[image(1), image(2)]],
            [[clip(3, seconds=min(20, window)), clip(4, seconds=min(20, window))]],
        )
    else:
        texts = [f"[INST] <image> <audio> Sample {i}: describe. [/INST]" for i in range(batch)]
        images, clips = (
            [[image(10 + i)] for i in range(batch)],
            [[clip(50 + i, seconds=min(10 + i % 7, window))] for i in range(batch)],
        )
    inputs = processor(text=texts, images=images, audio=clips, return_tensors="pt").to(DEVICE)
    with torch.no_grad():
        embeds = _scatter(model, inputs)
    lm = model.model.language_model
    position_ids = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)

    def ours():
        with torch.no_grad():
            model(**inputs, use_cache=False, logits_to_keep=1)

    def vision():
        with torch.no_grad():
            model.model.get_image_features(inputs["pixel_values"])

    def audio():
        with torch.no_grad():
            model.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])

    def language_model():
        with torch.no_grad():
            hidden = lm(
                inputs_embeds=embeds,
                attention_mask=inputs["attention_mask"],
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
            model.lm_head(hidden[:, -1:])

    def published():
        with torch.no_grad():
            merged = published_style_embeddings(
                model.model, inputs["input_ids"], inputs["pixel_values"], inputs["input_features"]
            )
            hidden = lm(
                inputs_embeds=merged, attention_mask=inputs["attention_mask"], use_cache=False
            ).last_hidden_state
            model.lm_head(hidden[:, -1:])

    times = interleaved_medians(
        {"ours": ours, "vision": vision, "audio": audio, "lm": language_model, "published": published},
        repeats=repeats,
    )
    parts = times["vision"] + times["audio"] + times["lm"]
    return {
        "batch": batch,
        "positions": int(inputs["input_ids"].numel()),
        "ours_s": times["ours"],
        "sum_of_parts_s": parts,
        "published_loop_s": times["published"],
        "ours_vs_parts": times["ours"] / parts,
        "published_vs_ours": times["published"] / times["ours"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,4,16")
    args = parse_arguments(parser, new_tokens=2, batches="1,2")
    processor = small_processor()
    model = small_model(processor)
    bare = bare_language_model(model)
    report(
        "decode: time per token after 2 images + 2 clips",
        [decode(model, processor, bare, args.repeats, args.new_tokens)],
        {"goal": "ratio <= 1.03"},
    )
    rows = [
        prefill(model, processor, int(b), max(2, args.repeats - 2 * (int(b) > 1))) for b in args.batches.split(",")
    ]
    report("prefill: forward with media", rows, {"goal": "ours_vs_parts <= 1.05"})


if __name__ == "__main__":
    main()
