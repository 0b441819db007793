"""Processor throughput: a 2-image 2-clip conversation through `MMMModalProcessor` against its parts called directly.

Baseline: SiglipImageProcessorPil on the two images, WhisperFeatureExtractor on the two clips and
the tokenizer on the already-expanded text (slot tokens written out), i.e. the unavoidable work.
Both get the same decoded inputs (PIL images, float arrays at 16 kHz). Goal: at most 1.10x.

    python bench/processor.py [--repeats 7] [--quick]
"""

import argparse
import re

from common import clip, image, interleaved_medians, parse_arguments, report, small_processor

from mmmmodal_hf.configuration_mmmmodal import AUDIO_SLOT_TOKEN, IMAGE_SLOT_TOKEN

SLOT = {"<image>": IMAGE_SLOT_TOKEN, "<audio>": AUDIO_SLOT_TOKEN}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=8, help="conversations per timed call")
    args = parse_arguments(parser, samples=2)
    processor = small_processor()
    text = "[INST] <image> </image>\n<image> </image>\n<audio> </audio>\n<audio> </audio>\nCompare them all. [/INST]"
    images = [image(1), image(2)]
    clips = [clip(3, seconds=12.0), clip(4, seconds=25.0)]
    batch_text, batch_images, batch_clips = [text] * args.samples, [images] * args.samples, [clips] * args.samples
    expanded = processor(text=batch_text, images=batch_images, audio=batch_clips, return_text_replacement_offsets=True)
    image_slots = processor.num_image_slots(
        processor.image_processor.size.height, processor.image_processor.size.width
    )
    slots = iter(
        [image_slots] * 2 + [processor.num_clip_slots(len(clips[0])), processor.num_clip_slots(len(clips[1]))]
    )
    pieces = re.split(r"(<image>|<audio>)", text)  # each opening tag gets its slots written after it
    written_out = ["".join(p + (SLOT[p] * next(slots) if p in SLOT else "") for p in pieces)] * args.samples
    assert processor.tokenizer(written_out, padding=True)["input_ids"] == expanded["input_ids"]

    def ours():
        processor(text=batch_text, images=batch_images, audio=batch_clips, return_tensors="np")

    def parts():
        processor.image_processor([i for pair in batch_images for i in pair], return_tensors="np")
        processor.feature_extractor(
            [c for pair in batch_clips for c in pair],
            sampling_rate=16000,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="np",
        )
        processor.tokenizer(written_out, padding=True, padding_side="left", return_tensors="np")

    times = interleaved_medians({"ours": ours, "parts": parts}, repeats=args.repeats)
    rows = [
        {
            "conversations_per_call": args.samples,
            "ours_samples_per_s": args.samples / times["ours"],
            "parts_samples_per_s": args.samples / times["parts"],
            "ours_vs_parts_time": times["ours"] / times["parts"],
        }
    ]
    report("processor: 2 images + 2 clips per conversation", rows, {"goal": "ours_vs_parts_time <= 1.10"})


if __name__ == "__main__":
    main()
