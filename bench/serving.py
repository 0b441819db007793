"""Serving throughput: vLLM (`mmmmodal serve`, streaming OpenAI requests) against the package's batched `generate`.

The same saved folder (random weights) and the same chats, in one run: `--chats` concurrent chats, each
an image, a clip and a question, answered greedily with exactly `--new-tokens` tokens (end tokens
ignored, so both produce the same count). Per system, medians of `--repeats` rounds: output tokens/s
over the whole batch, and time to first token (generate's is its prefill: every row's first token
arrives together; vLLM's is each streamed request's, median and worst). Run in the vLLM venv
(`.ci/install-vllm-venv`):

    .venv-vllm/bin/python bench/serving.py                          # the small configuration, CPU or GPU
    .venv-vllm/bin/python bench/serving.py --size tinyllama --chats 64   # published shapes, on a GPU
    .venv-vllm/bin/python bench/serving.py --size mistral-7b --chats 64 --dtype bfloat16

`--size tinyllama` / `mistral-7b` build SigLIP-base-384 + Whisper-small's encoder + the real LM shapes
with random weights (no download).
"""

import argparse
import concurrent.futures
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from common import DEVICE, LANGUAGE_MODELS, clip, image, parse_arguments, report, sized_config, small_processor
from transformers import StoppingCriteria

from mmmmodal_hf import MMMModalForConditionalGeneration

QUESTION = "What do you see in the picture and hear in the clip?"


def build_folder(size: str, dtype: torch.dtype, folder: Path) -> Path:
    processor = small_processor()
    config = sized_config(processor, size)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = MMMModalForConditionalGeneration(config).to(dtype)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def chats(count: int, clip_seconds: float, first_seed: int) -> list[list[dict]]:
    """`count` chats with media of their own: no round repeats another's (vLLM would reuse its cached prefixes)."""
    return [
        [{"role": "user", "content": [
            {"type": "image", "image": image(seed)},
            {"type": "audio", "audio": clip(seed, clip_seconds)},
            {"type": "text", "text": QUESTION},
        ]}]
        for seed in range(first_seed, first_seed + count)
    ]  # fmt: skip


class FirstStep(StoppingCriteria):
    """Notes when `generate` has its first token (for every row at once: the end of the prefill)."""

    def __init__(self):
        self.at = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.at is None:
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def measure_generate(folder: Path, warm_up, rounds, new_tokens: int, dtype: torch.dtype) -> dict:
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=dtype).to(DEVICE).eval()
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def run(batch):
        first = FirstStep()
        start = time.perf_counter()
        inputs = processor.apply_chat_template(
            batch, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(DEVICE)
        with torch.no_grad():
            output = model.generate(**inputs, **settings, stopping_criteria=[first])
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        return end - start, first.at - start, (output.shape[1] - inputs["input_ids"].shape[1]) * len(batch)

    run(warm_up)
    seconds, first_token, tokens = (statistics.median(values) for values in zip(*map(run, rounds)))
    return {"system": "batched generate", "tokens": tokens, "seconds": seconds, "ttft_median": first_token,
            "ttft_worst": first_token}  # fmt: skip


def openai_messages(conversation) -> list[dict]:
    import base64
    import io

    import soundfile

    blocks = conversation[0]["content"]
    png, wav = io.BytesIO(), io.BytesIO()
    blocks[0]["image"].save(png, format="PNG")
    soundfile.write(wav, blocks[1]["audio"], 16000, format="WAV", subtype="FLOAT")
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}},
        {"type": "text", "text": QUESTION},
    ]}]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_vllm(folder: Path, warm_up, rounds, new_tokens: int, dtype: str, flags: list[str]) -> dict:
    from openai import OpenAI

    port = free_port()
    command = [str(Path(sys.executable).with_name("mmmmodal")), "serve", str(folder), "--port", str(port)]
    command += ["--dtype", dtype, "--max-model-len", "4096", "--max-num-seqs", str(len(rounds[0])), *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("mmmmodal serve exited before it was ready") from None
                time.sleep(1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        settings = dict(model=str(folder), max_tokens=new_tokens, temperature=0, stream=True)
        settings.update(stream_options={"include_usage": True}, extra_body={"ignore_eos": True})

        def one(messages, start):
            """(time to first token, tokens generated, time to the last) of one streamed chat."""
            first = tokens = None
            for chunk in client.chat.completions.create(messages=messages, **settings):
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return first, tokens, time.perf_counter() - start

        def all_at_once(conversations):
            requests = [openai_messages(c) for c in conversations]
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                results = list(pool.map(lambda messages: one(messages, start), requests))
            firsts = [first for first, _, _ in results]
            seconds = max(done for _, _, done in results)
            return seconds, statistics.median(firsts), max(firsts), sum(tokens for _, tokens, _ in results)

        all_at_once(warm_up)
        measured = zip(*map(all_at_once, rounds))
        seconds, ttft_median, ttft_worst, tokens = (statistics.median(values) for values in measured)
        return {"system": "vLLM (mmmmodal serve)", "tokens": tokens, "seconds": seconds,
                "ttft_median": ttft_median, "ttft_worst": ttft_worst}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", *LANGUAGE_MODELS], default="small")
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (new media each) per system; medians")
    args, vllm_flags = parse_arguments(parser, known_only=True, chats=2, new_tokens=2, clip_seconds=1.0)
    dtype = getattr(torch, args.dtype)
    folder = build_folder(args.size, dtype, Path(tempfile.mkdtemp(prefix="mmmmodal-serving-")))
    warm_up = chats(1, args.clip_seconds, first_seed=10_000)
    rounds = [chats(args.chats, args.clip_seconds, first_seed=r * args.chats) for r in range(args.repeats)]
    baseline = measure_generate(folder, warm_up, rounds, args.new_tokens, dtype)
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()  # the baseline's model is gone: the GPU is vLLM's
    served = measure_vllm(folder, warm_up, rounds, args.new_tokens, args.dtype, vllm_flags)
    rows = []
    for row in (baseline, served):
        rows.append({
            "system": row["system"], "output_tok_per_s": row["tokens"] / row["seconds"],
            "ttft_median_s": row["ttft_median"], "ttft_worst_s": row["ttft_worst"], "total_s": row["seconds"],
        })  # fmt: skip
    ratio = rows[1]["output_tok_per_s"] / rows[0]["output_tok_per_s"]
    report(
        f"serving: {args.chats} chats (image + {args.clip_seconds:g} s clip), {args.new_tokens} tokens, {args.size}",
        rows,
        {"throughput_ratio_vllm_over_generate": ratio, "size": args.size, "dtype": args.dtype},
    )
    print(f"vLLM / batched generate, output tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
