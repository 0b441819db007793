"""Shared parts of the benchmarks: the small configuration, media, timing with medians, the machine.

The small configuration is large enough that compute dominates on a CPU and runs unchanged on a
GPU: a Llama-style LM of 4 layers at hidden 512 (the real 32k Mistral tokenizer), a SigLIP vision
tower of hidden 384 on 384 px images (patch 16: 576 slots) and a Whisper encoder of d_model 384 on
30 s windows (487 slots), both read at layer -2 of 5 (4 layers run), as published.

Every script takes `--quick`: tiny sizes (32 px images, 2 s windows, hidden 64), one repeat, few
tokens. It proves the script still runs (CI runs each once so); its figures mean nothing.
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
from mmmmodal_hf.benchmarking import interleaved_medians, median_seconds, report, synchronize  # noqa: F401
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK_ENV = "MMMMODAL_BENCH_QUICK"  # set by --quick, so a case run in a child process is tiny too


def quick() -> bool:
    return os.environ.get(QUICK_ENV) == "1"


def parse_arguments(parser: argparse.ArgumentParser, known_only: bool = False, **quick_values):
    """The script's arguments plus `--quick`; with it, `quick_values` (and one repeat) replace the defaults."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the script runs")
    args, rest = parser.parse_known_args()
    if not known_only and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.quick:
        os.environ[QUICK_ENV] = "1"
        for name, value in {"repeats": 1, **quick_values}.items():
            if hasattr(args, name):
                setattr(args, name, value)
    return (args, rest) if known_only else args


def small_processor() -> MMMModalProcessor:
    with tempfile.TemporaryDirectory(prefix="mmmmodal-bench-") as scratch:  # read whole by from_pretrained
        folder = mistral_tokenizer_folder(Path(scratch) / "tokenizer")
        if folder is None:
            raise SystemExit("the benchmarks use the real Mistral tokenizer: pip install mistral-common")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    side, window_seconds = (32, 2) if quick() else (384, 30)
    return MMMModalProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": side, "width": side}),
        feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=window_seconds),
        tokenizer=tokenizer,
        patch_size=16,
    )


def small_config(processor: MMMModalProcessor, layers: int = 4, **overrides) -> MMMModalConfig:
    if quick():
        return MMMModalConfig(**{**_quick_values(processor), **overrides})
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


# The published language models' shapes, for `sized_config` (random weights: nothing is downloaded).
LANGUAGE_MODELS = {
    "tinyllama": (LlamaConfig, dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                    num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5)),
    "mistral-7b": (MistralConfig, dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, sliding_window=None)),
}  # fmt: skip


def sized_config(processor: MMMModalProcessor, size: str, context: int = 8192) -> MMMModalConfig:
    """ "small" (`small_config`), or a published size: SigLIP-base-384 and Whisper-small's encoder (the config's
    defaults) with the real LM shapes. `context`: the LM's positions."""
    if size == "small" or quick():
        config = small_config(processor)
        config.text_config.max_position_embeddings = context
        return config
    config_class, shape = LANGUAGE_MODELS[size]
    text = config_class(**shape, vocab_size=len(processor.tokenizer), max_position_embeddings=context)
    return MMMModalConfig(text_config=text.to_dict(), **processor.special_token_ids)


def _quick_values(processor: MMMModalProcessor) -> dict:
    """The --quick sizes: the processor's 32 px images and 2 s windows; head_dim 32, the least vLLM's CPU attention takes."""
    return dict(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=16,
        ),
        audio_config=WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=100,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=len(processor.tokenizer), max_position_embeddings=8192,
        ),
        **processor.special_token_ids,
    )  # fmt: skip


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
