"""Video: the processor on one minute of 720p video, a video's prefill and the decode after it, each against a baseline.

1. Processor: `processor(text="<video> ...", videos=[file])` at the defaults (8 frames and the soundtrack) against
   transformers' `load_video` (PyAV backend, 8 frames), PyAV decoding the soundtrack, the SigLIP image processor and
   the Whisper feature extractor on them and the tokenizer on the expanded text, called directly. Goal: at most 1.10x.
2. Prefill: one forward on the video against the same frames and soundtrack pieces given as images and clips (each
   piece then a clip of its own, encoded in its own window). Goal: at most 1.05x.
3. Decode: time per generated token after the video against the bare language model (same weights) generating from
   the same merged prefix. Per token = (t(1 + N tokens) - t(1 token)) / N. Goal: at most 1.03x.

    python bench/video.py [--repeats 5] [--seconds 60] [--new-tokens 128] [--quick]

`--pooled-prefill` measures one case instead: the prefill of a `--frames`-frame video (64) with its soundtrack,
pooled frames (`pool_frames=True`, 144 slots a frame) against whole ones (576), at `--size` small or tinyllama
(the published towers and TinyLlama's shapes, random weights). Whole, 64 frames need about 38,000 positions, more
than the published 16,384, so the LM is given a context that holds them (timing only):

    python bench/video.py --pooled-prefill --size tinyllama --dtype bfloat16    # on a GPU
"""

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from common import (
    DEVICE,
    LANGUAGE_MODELS,
    interleaved_medians,
    parse_arguments,
    report,
    sized_config,
    small_model,
    small_processor,
)
from overhead import bare_language_model, seconds_per_token

from mmmmodal_hf import MMMModalForConditionalGeneration
from mmmmodal_hf.media_mmmmodal import load_video

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from video_files import write_video  # noqa: E402  (the tests' writer: a colour a second, beeps on the soundtrack)

PROMPT = "[INST] <video> What happens, and when does the beep sound? [/INST]"


def soundtrack(path, rate: int) -> np.ndarray:
    """The baseline's soundtrack: PyAV straight to mono float at `rate` (transformers' `load_audio` reads video
    files only through torchcodec, which does not run here)."""
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    return np.concatenate(chunks)


def processing(processor, path, repeats: int) -> dict:
    from transformers.video_utils import load_video as transformers_load_video

    extractor = processor.feature_extractor
    expanded = processor(text=PROMPT, videos=[path])
    written_out = processor.tokenizer.decode(expanded["input_ids"][0], skip_special_tokens=False)

    def ours():
        processor(text=PROMPT, videos=[path], return_tensors="np")

    def parts():
        frames, _ = transformers_load_video(str(path), num_frames=8, backend="pyav")
        processor.image_processor(list(frames), return_tensors="np")
        sound = soundtrack(path, extractor.sampling_rate)
        windows = [sound[i : i + extractor.n_samples] for i in range(0, len(sound), extractor.n_samples)]
        extractor(windows, sampling_rate=extractor.sampling_rate, padding="max_length", return_tensors="np")
        processor.tokenizer([written_out], add_special_tokens=False, return_tensors="np")

    times = interleaved_medians({"ours": ours, "parts": parts}, repeats=repeats)
    return {"ours_s": times["ours"], "baseline_s": times["parts"], "ratio": times["ours"] / times["parts"],
            "detail": f"{len(expanded['pixel_values'])} frames, {len(expanded['input_features'])} windows"}  # fmt: skip


def as_images_and_clips(processor, path) -> dict:
    """The same frames and soundtrack pieces, given as images and clips."""
    video = load_video(path, sampling_rate=processor.feature_extractor.sampling_rate)
    rate, bounds = processor.feature_extractor.sampling_rate, [*video.times[1:], video.duration]
    starts = [0.0, *video.times[1:]]
    pieces = [video.soundtrack[round(start * rate) : round(end * rate)] for start, end in zip(starts, bounds)]
    text = "[INST] " + "\n".join("<image> </image>\n<audio> </audio>" for _ in video.frames) + PROMPT[15:]
    return processor(text=text, images=video.frames, audio=pieces, return_tensors="pt").to(DEVICE)


def forwards(model, ours, baseline, repeats: int) -> dict:
    """One forward on `ours` against one on `baseline` (medians, interleaved), with both inputs' sizes."""
    with torch.no_grad():
        times = interleaved_medians({"ours": lambda: model(**ours), "baseline": lambda: model(**baseline)}, repeats)
    return {
        "ours_s": times["ours"],
        "baseline_s": times["baseline"],
        "ratio": times["ours"] / times["baseline"],
        "detail": f"positions {ours['input_ids'].shape[1]} vs {baseline['input_ids'].shape[1]}, Whisper windows "
        f"{ours['input_features'].shape[0]} vs {baseline['input_features'].shape[0]}, {len(ours['pixel_values'])} frames",
    }


def prefill(model, processor, path, repeats: int) -> dict:
    video = processor(text=PROMPT, videos=[path], return_tensors="pt").to(DEVICE)
    return forwards(model, video, as_images_and_clips(processor, path), repeats)


def decode(model, processor, path, repeats: int, new_tokens: int) -> dict:
    inputs = processor(text=PROMPT, videos=[path], return_tensors="pt").to(DEVICE)
    ours_per_token, bare_per_token = seconds_per_token(model, bare_language_model(model), inputs, repeats, new_tokens)
    return {
        "ours_s": ours_per_token,
        "baseline_s": bare_per_token,
        "ratio": ours_per_token / bare_per_token,
        "detail": f"s per token, prompt of {inputs['input_ids'].shape[1]} positions",
    }


def pooled_prefill(model, processor, path, repeats: int, frames: int) -> dict:
    """One forward on a `frames`-frame video with pooled frames against the same video with whole ones."""
    kwargs = dict(text=PROMPT, videos=[path], num_frames=frames, return_tensors="pt")
    whole = processor(**kwargs).to(DEVICE)
    return forwards(model, processor(**kwargs, pool_frames=True).to(DEVICE), whole, repeats)


def pooled_prefill_model(processor, size: str, dtype: torch.dtype, context: int):
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = MMMModalForConditionalGeneration(sized_config(processor, size, context)).to(dtype).eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the 720p test video")
    parser.add_argument("--new-tokens", type=int, default=128, help="decode: enough that the prefills cancel out")
    parser.add_argument(
        "--pooled-prefill", action="store_true", help="only the prefill of a long video, pooled or not"
    )
    parser.add_argument("--frames", type=int, default=64, help="--pooled-prefill: frames taken from the video")
    parser.add_argument(
        "--size", choices=["small", *LANGUAGE_MODELS], default="small", help="--pooled-prefill's model"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="--pooled-prefill's")
    args = parse_arguments(parser, seconds=4.0, new_tokens=2, frames=4)
    processor = small_processor()
    with tempfile.TemporaryDirectory(prefix="mmmmodal-bench-video-") as scratch:
        size = (64, 48) if args.quick else (1280, 720)
        path = write_video(Path(scratch) / "clip.mp4", seconds=args.seconds, fps=30, size=size, gop=60,
                           beeps=(args.seconds / 3,))  # fmt: skip
        if args.pooled_prefill:
            model = pooled_prefill_model(processor, args.size, getattr(torch, args.dtype), context=65536)
            row = pooled_prefill(model, processor, path, args.repeats, args.frames)
            report(f"video: prefill of {args.frames} frames, pooled against whole ({args.size}, {args.dtype})",
                   [{"case": f"prefill: {args.frames} pooled frames vs whole", **row}],
                   {"size": args.size, "dtype": args.dtype, "device": DEVICE.type})  # fmt: skip
            return
        model = small_model(processor)
        rows = [
            {"case": "processor (1 min of 720p, 8 frames + soundtrack)", **processing(processor, path, args.repeats)},
            {
                "case": "prefill: video vs frames and pieces as images and clips",
                **prefill(model, processor, path, args.repeats),
            },  # fmt: skip
            {
                "case": "decode per token after the video vs the bare LM",
                **decode(model, processor, path, args.repeats, args.new_tokens),
            },  # fmt: skip
        ]
    report("video: processor, prefill and decode against baselines", rows,
           {"goals": "processor <= 1.10, prefill <= 1.05, decode <= 1.03 (ratio)", "frame_time_base": str(Fraction(1, 30))})  # fmt: skip


if __name__ == "__main__":
    main()
