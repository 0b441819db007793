"""Peak memory: inference and one training step of the small configuration, and a table for the real variants.

Measured: each case runs in its own process; on a CPU the peak resident set (ru_maxrss) after the
case minus the resident set before it, on a GPU `torch.cuda.max_memory_allocated`. Computed (meta
device, no weights): parameters per part of the published TinyLlama and Mistral variants, their
bf16 weights, and what DeepSpeed ZeRO-2 with CPU optimizer offload holds per GPU at 8 GPUs in the
finetune stage (bf16 weights of every part + this rank's 1/8 of the bf16 gradients of the trainable
parts; fp32 master weights and Adam moments, 12 bytes per trainable parameter, live in CPU memory).
Activations are not included (they depend on block size and checkpointing).

    python bench/memory.py [--quick]
"""

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import DEVICE, parse_arguments, report

CASE = r"""
import json, resource, sys, torch
sys.path.insert(0, "bench")
from common import DEVICE, clip, image, small_model, small_processor
from mmmmodal_hf.training import prepare_stage
processor = small_processor()
model = small_model(processor)
inputs = processor(text="[INST] <image> <image> <audio> <audio> Describe. [/INST]The four.</s>",
                   images=[image(1), image(2)], audio=[clip(3), clip(4)], return_tensors="pt").to(DEVICE)
if DEVICE.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if sys.argv[1] == "inference":
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=16, do_sample=False)
else:
    model = prepare_stage(model, "finetune").train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    labels = inputs["input_ids"].clone()
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()
after = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"positions": int(inputs["input_ids"].shape[1]), "peak_extra_mb": (after - before) / 2**20,
                  "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}))
"""


def measured(case: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", CASE, case], capture_output=True, text=True, timeout=1200)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def variant_table() -> list[dict]:
    from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration

    mistral = {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32006, "max_position_embeddings": 32768,
    }  # fmt: skip
    rows = []
    for name, text_config in (("TinyLlama 1.1B", None), ("Mistral 7B", mistral)):
        config = MMMModalConfig(text_config=text_config) if text_config else MMMModalConfig()
        with torch.device("meta"):
            model = MMMModalForConditionalGeneration(config)
        inner = model.model
        parts = {
            "vision": sum(p.numel() for p in inner.vision_tower.parameters()),
            "audio": sum(p.numel() for p in inner.audio_tower.parameters()),
            "projectors": sum(p.numel() for p in inner.image_projector.parameters())
            + sum(p.numel() for p in inner.audio_projector.parameters()),
            "language_model": sum(p.numel() for p in inner.language_model.parameters())
            + (0 if config.tie_word_embeddings else model.lm_head.weight.numel()),
        }
        total = sum(parts.values())
        trainable = parts["projectors"] + parts["language_model"]  # finetune stage: encoders frozen
        rows.append(
            {
                "variant": name,
                **{f"{k}_params": v for k, v in parts.items()},
                "total_params": total,
                "bf16_weights_gb": 2 * total / 1e9,
                "zero2_offload_gpu_gb_at_8": (2 * total + 2 * trainable / 8) / 1e9,
                "zero2_offload_cpu_gb_node": 12 * trainable / 1e9,
            }
        )
    return rows


def main() -> None:
    parse_arguments(argparse.ArgumentParser(description=__doc__))
    rows = []
    for case in ("inference", "training_step"):
        result = measured(case)
        rows.append({"case": case, "device": DEVICE.type, **result})
    report(
        "peak memory of the small configuration",
        rows,
        {"rss_before_case": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
    )
    report("published variants, computed on the meta device", variant_table())


if __name__ == "__main__":
    main()
