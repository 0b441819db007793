"""Server memory under load: the resident memory of `mmmmodal serve` (API server and engine, every process it
started) over `--requests` chat requests, each with an image and a clip never sent before, on 127.0.0.1.

The model is small where compute is concerned (hidden 64, 2 layers) but takes the published media shapes (384 px
images: 576 slots, 30 s windows: 487 slots), so each request holds the tensors a real one holds: vLLM's multimodal
processor cache (`--mm-processor-cache-gb`, 4 GiB by default in vLLM) keeps those of recent requests. Baseline: the
memory after the first `--warm-up` requests. Run in the vLLM venv (`.ci/install-vllm-venv`):

    .venv-vllm/bin/python bench/server_memory.py [--requests 2000] [any vLLM flag, e.g. --mm-processor-cache-gb 0]
"""

import argparse
import base64
import concurrent.futures
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import soundfile
import torch
from common import clip, image, parse_arguments, report, small_processor
from transformers import LlamaConfig, SiglipVisionConfig, WhisperConfig

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration


def build_folder(folder: Path) -> Path:
    processor = small_processor()
    side = processor.image_processor.size.height
    windows = processor.feature_extractor.nb_max_frames // 2
    config = MMMModalConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=side, patch_size=16),
        audio_config=WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                   decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                                   num_mel_bins=80, max_source_positions=windows),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, vocab_size=len(processor.tokenizer),
                                max_position_embeddings=4096),
        **processor.special_token_ids,
    )  # fmt: skip
    torch.manual_seed(0)
    MMMModalForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0) / 1024


def group_rss_mb(session: int) -> float:
    """Resident memory of every process in the server's session (it and the engine workers it started)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def request_body(model: str, index: int) -> bytes:
    png, wav = io.BytesIO(), io.BytesIO()
    image(100_000 + index, size=(96, 72)).save(png, format="PNG")
    soundfile.write(wav, clip(200_000 + index, seconds=5.0), 16000, format="WAV")
    content = [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()},
        },
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}},
        {"type": "text", "text": f"Request {index}: what do you see and hear?"},
    ]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0}
    return json.dumps(body).encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warm-up", type=int, default=50, help="requests before the baseline reading")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every", type=int, default=100, help="requests between readings")
    args, vllm_flags = parse_arguments(parser, known_only=True, requests=12, warm_up=4, every=4)
    folder = build_folder(Path(tempfile.mkdtemp(prefix="mmmmodal-server-memory-")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("mmmmodal")), "serve", str(folder), "--port", str(port)]
    command += ["--dtype", "float32", "--max-model-len", "4096", "--enforce-eager", *vllm_flags]
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the server did not start: {(folder / 'server.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(2)
        url = f"{base}/v1/chat/completions"
        readings, start = [], time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            for first in range(0, args.requests, args.every):
                batch = range(first, min(first + args.every, args.requests))
                statuses = list(pool.map(lambda i: post(url, request_body(str(folder), i)), batch))
                assert statuses == [200] * len(statuses), statuses
                readings.append({"requests": batch[-1] + 1, "rss_mb": group_rss_mb(server.pid),
                                 "api_server_mb": rss_mb(server.pid), "seconds": time.perf_counter() - start})  # fmt: skip
                print(f"{readings[-1]['requests']} requests: {readings[-1]['rss_mb']:.0f} MB", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    baseline = next(r for r in readings if r["requests"] >= min(args.warm_up, readings[-1]["requests"]))
    half = readings[len(readings) // 2]
    report(
        f"server memory over {args.requests} requests (image + 5 s clip each, all new)",
        readings,
        {
            "vllm_flags": " ".join(vllm_flags) or "(mmmmodal serve's defaults)",
            "baseline_mb": baseline["rss_mb"],
            "last_vs_baseline": readings[-1]["rss_mb"] / baseline["rss_mb"],
            "last_half_growth_mb": readings[-1]["rss_mb"] - half["rss_mb"],
        },
    )


if __name__ == "__main__":
    main()
