"""Encoders that stop at the feature layer, against full towers, at the real published shapes.

SigLIP-base-patch16-384 (12 layers, hidden 768) on one 384 px image and the Whisper-small encoder
(12 layers, d_model 768) on one 30 s window, random weights. Baseline: the full tower run with
`output_hidden_states=True` and layer -2 read (what the model did before trimming, and what the
published code does). Goal: trimmed time at most 0.92x.

    python bench/towers.py [--repeats 5] [--quick]
"""

import argparse
import copy

import torch
from common import DEVICE, interleaved_medians, parse_arguments, quick, report
from transformers import SiglipVisionConfig, SiglipVisionModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmmmodal_hf.configuration_mmmmodal import encoder_layers_needed
from mmmmodal_hf.conversion.build import trim_tower

SIGLIP_BASE_384 = SiglipVisionConfig(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=384,
    patch_size=16,
)
WHISPER_SMALL = WhisperConfig(
    d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, num_mel_bins=80
)


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(name: str, full, depth: int, inputs: torch.Tensor, repeats: int) -> dict:
    full = full.to(DEVICE).eval()
    inputs = inputs.to(DEVICE)
    trimmed = copy.deepcopy(full)
    trim_tower(trimmed, encoder_layers_needed(-2, depth))
    with torch.no_grad():
        expected = full(inputs, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(trimmed(inputs).last_hidden_state, expected), name

    def run_full():
        with torch.no_grad():
            return full(inputs, output_hidden_states=True).hidden_states[-2]

    def run_trimmed():
        with torch.no_grad():
            return trimmed(inputs).last_hidden_state

    times = interleaved_medians({"full": run_full, "trimmed": run_trimmed}, repeats=repeats)
    return {
        "encoder": name,
        "full_params": parameters(full),
        "trimmed_params": parameters(trimmed),
        "params_ratio": parameters(trimmed) / parameters(full),
        "full_s": times["full"],
        "trimmed_s": times["trimmed"],
        "time_ratio": times["trimmed"] / times["full"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_arguments(parser)
    torch.manual_seed(0)
    if quick():
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                    image_size=32, patch_size=16)  # fmt: skip
        audio = WhisperConfig(d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=64,
                              num_mel_bins=80, max_source_positions=100)  # fmt: skip
        depth, side, frames, names = 3, 32, 200, ("tiny SigLIP, one image", "tiny Whisper encoder, one window")
    else:
        vision, audio, depth, side, frames = SIGLIP_BASE_384, WHISPER_SMALL, 12, 384, 3000
        names = ("SigLIP-base-384, one image", "Whisper-small encoder, one 30 s window")
    cases = (
        (names[0], SiglipVisionModel(vision), depth, torch.randn(1, 3, side, side)),
        (names[1], WhisperEncoder(audio), depth, torch.randn(1, 80, frames)),
    )
    rows = [measure(name, full, depth, inputs, args.repeats) for name, full, depth, inputs in cases]
    report("towers cut at the feature layer (-2)", rows, {"goal": "time_ratio <= 0.92"})


if __name__ == "__main__":
    main()
