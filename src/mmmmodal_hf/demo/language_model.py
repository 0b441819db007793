"""The demo's small LM: its config, and the start its first layer's attention gets.

A 128-wide, 2-layer LM trained from scratch for ten minutes must find "image 3" among several
media: the question's "3" has to meet the slots tagged 3 (the ordinal tags, `build_model`), and,
with `--media-labels`, the label "Image 3:". Two options aim at that match. Position-free pairs
are on by default since 2026-11-29 (8 of 16): on unlabelled media, over three seeds, they lifted a
middle medium on two and the mean by about a point, the third seed losing 3. With labels, they had
gained on one seed and lost on the other, as the question's digit could match the label's digit
instead. Match heads stay off. The two options:

- Position-free frequency pairs: RoPE turns every query and key by its position, so on the
  usual spectrum a match by content fades with distance. Here the slowest `position_free_pairs`
  of each head's pairs are slowed 1000-fold (Llama 3's frequency scaling, cut between two pairs):
  they carry content across the whole context, the others keep short-range positions.
- Match heads: `match_heads` heads of layer 0 start with the key projection equal to the query
  projection, on the position-free pairs alone, so each token first attends to the tokens most
  like it. Training is free to change them; trained on labelled media, the question's digit found
  the label's digit (the identical token) rather than the tagged slots, and on unlabelled media
  a match head added to the position-free pairs gave a mean of 63%, against 76% for the pairs
  alone (seed 0).

Measured in docs/demo-experiments.md.
"""

import math

import torch
from transformers import LlamaConfig, PreTrainedConfig, Qwen3Config

HEAD_DIM = 32
TEXT_CONFIGS = {"qwen3": Qwen3Config, "llama": LlamaConfig}  # the demo LM's layouts, by `DemoSettings.lm`
POSITION_FREE_SLOWDOWN = 1000.0  # a pair turning 0.013 rad per token at base 100 turns 0.013 rad per 1000


def rope_parameters(theta: float, position_free_pairs: int, head_dim: int = HEAD_DIM) -> dict:
    """RoPE at base `theta` with the slowest `position_free_pairs` frequency pairs slowed 1000-fold."""
    pairs = head_dim // 2
    if not 0 <= position_free_pairs < pairs:
        raise ValueError(f"position_free_pairs must be in [0, {pairs}) for {head_dim}-wide heads")
    if position_free_pairs == 0:
        return {"rope_type": "default", "rope_theta": theta}
    wavelengths = [2 * math.pi * theta ** (2 * i / head_dim) for i in range(pairs)]
    last_turning, first_free = wavelengths[pairs - position_free_pairs - 1], wavelengths[pairs - position_free_pairs]
    # Llama 3's scaling slows pairs longer than `original_max_position_embeddings` / low_freq_factor,
    # keeps those shorter than it / high_freq_factor, and blends between: the cut falls between two pairs.
    cut = math.sqrt(last_turning * first_free)
    return {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": POSITION_FREE_SLOWDOWN,
        "original_max_position_embeddings": round(cut),
        "low_freq_factor": 1.0,
        "high_freq_factor": math.sqrt(round(cut) / last_turning),
    }


def build_text_config(settings, tokenizer) -> PreTrainedConfig:
    """The demo's LM (`settings`: a `DemoSettings`): `hidden_size` wide, `layers` deep, 32-wide heads.

    Llama's layout (RMSNorm, SwiGLU, RoPE); `lm="qwen3"` adds Qwen3's QK-norm, an RMSNorm on each
    head's queries and keys, which measured better at picking one medium out of several (docs/demo-experiments.md).
    """
    hidden = settings.hidden_size
    return TEXT_CONFIGS[settings.lm](
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=settings.layers,
        num_attention_heads=hidden // HEAD_DIM,
        num_key_value_heads=hidden // HEAD_DIM,
        head_dim=HEAD_DIM,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        rope_parameters=rope_parameters(settings.rope_theta, settings.position_free_pairs),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def position_free_dims(position_free_pairs: int, head_dim: int = HEAD_DIM) -> list[int]:
    """The dimensions of a head that the slowed pairs turn (pair i turns dims i and i + head_dim / 2)."""
    half = head_dim // 2
    return [d for i in range(half - position_free_pairs, half) for d in (i, i + half)]


def start_match_heads(language_model: torch.nn.Module, heads: int, position_free_pairs: int) -> None:
    """Make the first `heads` heads of layer 0 match like with like: keys = queries, on position-free dims only."""
    if heads == 0:
        return
    if position_free_pairs == 0:
        raise ValueError("match heads need position-free pairs: RoPE would turn their match away with distance")
    attention = language_model.layers[0].self_attn
    if heads > attention.k_proj.out_features // HEAD_DIM:
        raise ValueError(f"layer 0 has {attention.k_proj.out_features // HEAD_DIM} key heads, not {heads}")
    kept = torch.zeros(HEAD_DIM, dtype=torch.bool)
    kept[position_free_dims(position_free_pairs)] = True
    with torch.no_grad():
        for head in range(heads):
            rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            query = attention.q_proj.weight[rows] * kept[:, None]
            attention.q_proj.weight[rows] = query
            attention.k_proj.weight[rows] = query
