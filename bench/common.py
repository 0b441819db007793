"""Shared parts of the benchmarks: the small configuration, media, timing with medians, the machine.

The small configuration is large enough that compute dominates on a CPU and runs unchanged on a
GPU: a Llama-style LM of 4 layers at hidden 512 (the real 32k Mistral tokenizer), a SigLIP vision
tower of hidden 384 on 384 px images (patch 16: 576 slots) and a Whisper encoder of d_model 384 on
30 s windows (487 slots), both read at layer -2 of 5 (4 layers run), as published.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
from mmmmodal_hf.demo.tokenizer import mistral_tokenizer_folder

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def small_processor() -> MMMModalProcessor:
    folder = mistral_tokenizer_folder(Path(tempfile.mkdtemp(prefix="mmmmodal-bench-")) / "tokenizer")
    if folder is None:
        raise SystemExit("the benchmarks use the real Mistral tokenizer: pip install mistral-common")
    return MMMModalProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=30),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        patch_size=16,
    )


def small_config(processor: MMMModalProcessor, layers: int = 4, **overrides) -> MMMModalConfig:
    values = dict(
        vision_config=SiglipVisionConfig(
            hidden_size=384, intermediate_size=1536, num_hidden_layers=5, num_attention_heads=6,
            image_size=384, patch_size=16,
        ),
        audio_config=WhisperConfig(
            d_model=384, encoder_layers=5, encoder_attention_heads=6, encoder_ffn_dim=1536,
            decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
        ),
        text_config=LlamaConfig(
            hidden_size=512, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=len(processor.tokenizer), max_position_embeddings=8192,
        ),
        **processor.special_token_ids,
    )  # fmt: skip
    return MMMModalConfig(**{**values, **overrides})


def small_model(processor: MMMModalProcessor, seed: int = 0, **overrides) -> MMMModalForConditionalGeneration:
    torch.manual_seed(seed)
    model = MMMModalForConditionalGeneration(small_config(processor, **overrides)).to(DEVICE).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model


def image(seed: int, size=(640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def clip(seed: int, seconds: float = 20.0, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t) + 0.02 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(function, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median time of each function, runs interleaved (a, b, a, b, ...) so drift hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def report(name: str, rows: list[dict], extra: dict | None = None) -> None:
    """Print a table and one JSON line (for BENCHMARKS.md)."""
    print(f"\n== {name} ==  ({', '.join(f'{k}={v}' for k, v in machine().items())})")
    if rows:
        keys = list(rows[0])
        print(" | ".join(keys))
        for row in rows:
            print(" | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    print("JSON " + json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}))
    sys.stdout.flush()
