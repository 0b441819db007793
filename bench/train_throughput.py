"""Training throughput: our zero anchor against the published code's blank-placeholder scheme.

The published code prepended a blank 384 px image and 30 s of silence to every sample (masked out
of the loss) so that every rank always used both projectors. We keep missing branches in the graph
with an exact zero instead. Both train the finetune stage (encoders frozen, LM + projectors train,
AdamW) of the small configuration on the same batches of 4: a text-only, an image, an audio and a
mixed conversation. Throughput counts real content tokens only (no padding, no placeholders).

    python bench/train_throughput.py [--repeats 3] [--quick]
"""

import argparse

import numpy as np
import torch
from common import DEVICE, clip, image, interleaved_medians, parse_arguments, report, small_model, small_processor
from PIL import Image

from mmmmodal_hf.training import prepare_stage

SAMPLES = [
    ("[INST] Terangkan fotosintesis dengan ringkas. [/INST]Tumbuhan menukar cahaya kepada tenaga kimia.</s>", [], []),
    ("[INST] <image> What colour is the car? [/INST]It is red, parked by a white wall.</s>", [image(1)], []),
    ("[INST] <audio> Apa yang dikatakan? [/INST]Dia bertanya tentang cuaca esok.</s>", [], [clip(2, seconds=12.0)]),
    (
        "[INST] <image> <image> <audio> Which picture matches the sound? [/INST]The second one: a dog barking.</s>",
        [image(3), image(4)],
        [clip(5, seconds=8.0)],
    ),
]


def batch_for(processor, samples, blank_placeholders: bool) -> tuple[dict, int]:
    texts, images, clips = [], [], []
    for text, sample_images, sample_clips in samples:
        if blank_placeholders:  # the published scheme: a blank image and 30 s of silence in front of everything
            text = text.replace("[INST] ", "[INST] <image> <audio> ", 1)
            sample_images = [Image.new("RGB", (384, 384))] + sample_images
            sample_clips = [np.zeros(30 * 16000, dtype=np.float32)] + sample_clips
        texts.append(text)
        images.append(sample_images)
        clips.append(sample_clips)
    inputs = processor(text=texts, images=images, audio=clips, padding_side="right", return_tensors="pt")
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    media = (processor.image_token_id, processor.audio_token_id)
    for token in media + (processor.image_start_token_id, processor.image_end_token_id):
        labels[inputs["input_ids"] == token] = -100
    inputs["labels"] = labels
    dead = 0
    if blank_placeholders:  # the placeholder positions: 2 tags + 576 slots + 2 tags + 487 slots per sample
        dead = len(samples) * (4 + 576 + 487)
    return inputs.to(DEVICE), dead


def real_tokens(processor, samples) -> int:
    """Content positions of the batch: text and the media each sample really holds."""
    inputs = processor(text=[s[0] for s in samples], images=[s[1] for s in samples], audio=[s[2] for s in samples])
    return sum(len(ids) for ids in inputs["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_arguments(parser)
    processor = small_processor()
    models, optimizers, batches = {}, {}, {}
    for name, blanks in (("anchor", False), ("blank_placeholders", True)):
        model = prepare_stage(small_model(processor), "finetune")
        model.train()
        models[name] = model
        optimizers[name] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        batches[name] = batch_for(processor, SAMPLES, blanks)

    def step(name):
        def run():
            inputs, _ = batches[name]
            loss = models[name](**inputs).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

        return run

    times = interleaved_medians({name: step(name) for name in models}, repeats=args.repeats)
    content = real_tokens(processor, SAMPLES)
    rows = []
    for name in models:
        inputs, dead = batches[name]
        rows.append(
            {
                "scheme": name,
                "positions_per_batch": int(inputs["input_ids"].numel()),
                "dead_positions": dead,
                "images_encoded": int(inputs["pixel_values"].shape[0]),
                "audio_windows_encoded": int(inputs["input_features"].shape[0]),
                "step_s": times[name],
                "content_tokens_per_s": content / times[name],
            }
        )
    ratio = rows[0]["content_tokens_per_s"] / rows[1]["content_tokens_per_s"]
    report("training step throughput (finetune stage, batch of 4)", rows, {"anchor_vs_blank_throughput": ratio})
    print(f"throughput ratio, anchor / blank placeholders: {ratio:.2f}x")


if __name__ == "__main__":
    main()
