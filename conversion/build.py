"""Compose an untrained MMMModal checkpoint from a causal LM, a SigLIP model and a Whisper model.

    mmmmodal build --preset tinyllama --output-dir mmmmodal-tinyllama
    mmmmodal build --llm path/to/lm --vision google/siglip-base-patch16-384 --audio openai/whisper-small --output-dir out

Only the SigLIP vision tower and the Whisper encoder are kept. The tag and slot tokens are added
to the LM's tokenizer and their embedding rows (input and output) start at the mean of the
existing rows, not at random. The folder holds safetensors (sharded above `--max-shard-size`),
one `processor_config.json`, the chat template, a generation config, the code files and a model
card: it is ready for `mmmmodal push`.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mmmmodal_hf import (
    MMMModalAudioProjector,
    MMMModalConfig,
    MMMModalForConditionalGeneration,
    MMMModalImageProjector,
    MMMModalProcessor,
)
from mmmmodal_hf.cli_errors import InputError, why_unloadable
from mmmmodal_hf.cli_help import command_parser, hub_repo_id, positive
from mmmmodal_hf.conversion.model_card import parameter_counts, render_model_card
from mmmmodal_hf.modeling_mmmmodal import tower_cuts

# The two published variants (arXiv 2402.11297): both see through SigLIP-base-384 and hear through
# Malaysian Whisper-small.
PRESETS = {
    "tinyllama": {
        "llm": "mesolitica/malaysian-tinyllama-1.1b-16k-instructions-v3",
        "vision": "google/siglip-base-patch16-384",
        "audio": "mesolitica/malaysian-whisper-small",
        "repo_id": "mesolitica/malaysian-tinyllama-1.1b-mmmmodal",
    },
    "mistral": {
        "llm": "mesolitica/malaysian-mistral-7b-32k-instructions-v4",
        "vision": "google/siglip-base-patch16-384",
        "audio": "mesolitica/malaysian-whisper-small",
        "repo_id": "mesolitica/malaysian-mistral-mmmmodal",
    },
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _tower_parts(tower: nn.Module) -> tuple[nn.ModuleList, str]:
    """The layer list and the name of the final norm of a SigLIP vision model or a Whisper encoder."""
    if hasattr(tower, "encoder") and hasattr(tower, "post_layernorm"):
        return tower.encoder.layers, "post_layernorm"
    return tower.layers, "layer_norm"


def trim_tower(tower: nn.Module, layers_kept: int, keep_final_norm: bool = False) -> dict[str, int]:
    """Remove what never reaches the features: layers from `layers_kept` on, the final norm, a pooling head.

    After trimming, the tower's `last_hidden_state` is exactly `hidden_states[feature_layer]` of
    the full tower. That hidden state comes before the final norm, except Whisper's last one
    (transformers ties it to the normed output): `keep_final_norm` keeps the norm for that case.
    Works in place on a SigLIP vision model or a Whisper encoder (built here or loaded); returns
    the parameters removed, by part.
    """
    layers, norm_name = _tower_parts(tower)
    removed = {}
    extra = [layer for index, layer in enumerate(layers) if index >= layers_kept]
    if extra:
        last = len(layers) - 1
        name = f"layer {last}" if last == layers_kept else f"layers {layers_kept}-{last}"
        removed[name] = sum(p.numel() for layer in extra for p in layer.parameters())
        del layers[layers_kept:]
    norm = getattr(tower, norm_name)
    if not keep_final_norm and not isinstance(norm, nn.Identity):
        removed[norm_name] = sum(p.numel() for p in norm.parameters())
        setattr(tower, norm_name, nn.Identity())
    if getattr(tower, "use_head", False):
        removed["head"] = sum(p.numel() for p in tower.head.parameters())
        del tower.head
        tower.use_head = False
    return removed


@dataclass
class BuildReport:
    output_dir: Path
    parameters: dict[str, int]
    added_tokens: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    dry_run: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # tower part -> parameters never used, not stored

    def summary(self) -> str:
        lines = [f"{'would build' if self.dry_run else 'built'} {self.output_dir}"]
        lines += [f"  {name:16s} {count:>14,d} parameters" for name, count in self.parameters.items()]
        lines += [
            f"  dropped {name}: {count:,d} parameters (after the feature layer)"
            for name, count in self.dropped.items()
        ]
        lines.append(f"  added tokens: {', '.join(self.added_tokens) or 'none'}")
        lines += [f"  {name}" for name in self.files]
        return "\n".join(lines)


def mean_initialise_new_rows(weight: torch.Tensor, old_rows: int, new_rows: int) -> torch.Tensor:
    """`weight` with `new_rows` rows; every row from `old_rows` on is the mean of the rows before it."""
    grown = weight.new_empty(new_rows, weight.shape[1])
    kept = min(weight.shape[0], new_rows)
    grown[:kept] = weight[:kept]
    grown[old_rows:] = weight[:old_rows].float().mean(0).to(weight.dtype)
    return grown


def resize_token_embeddings_to_mean(model: MMMModalForConditionalGeneration, tokens_before: int, vocab: int) -> None:
    """Grow (or keep) the input and output embeddings to `vocab` rows, new tokens at the old mean."""
    embeddings = model.get_input_embeddings()
    new_input = mean_initialise_new_rows(embeddings.weight.data, tokens_before, max(vocab, embeddings.weight.shape[0]))
    model.set_input_embeddings(torch.nn.Embedding.from_pretrained(new_input, freeze=False))
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    else:
        head = model.lm_head
        new_head = mean_initialise_new_rows(head.weight.data, tokens_before, new_input.shape[0])
        model.lm_head = torch.nn.Linear(new_head.shape[1], new_head.shape[0], bias=False, dtype=new_head.dtype)
        model.lm_head.weight = torch.nn.Parameter(new_head)
    model.config.text_config.vocab_size = new_input.shape[0]


def _vision_config(vision: str) -> SiglipVisionConfig:
    config = AutoConfig.from_pretrained(vision)
    return config.vision_config if hasattr(config, "vision_config") else config


def build_processor(llm: str, vision: str, audio: str, audio_conv_kernel: int, audio_conv_stride: int):
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokens_before = len(tokenizer)
    processor = MMMModalProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision),
        feature_extractor=AutoFeatureExtractor.from_pretrained(audio),
        tokenizer=tokenizer,
        patch_size=_vision_config(vision).patch_size,
        audio_conv_kernel=audio_conv_kernel,
        audio_conv_stride=audio_conv_stride,
    )
    added = [processor.tokenizer.convert_ids_to_tokens(i) for i in range(tokens_before, len(processor.tokenizer))]
    return processor, tokens_before, added


def build_config(processor, text_config, vision_config, audio_config, audio_conv_kernel, audio_conv_stride):
    return MMMModalConfig(
        vision_config=vision_config,
        audio_config=audio_config,
        text_config=text_config,
        audio_conv_kernel=audio_conv_kernel,
        audio_conv_stride=audio_conv_stride,
        **processor.special_token_ids,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )


def build_checkpoint(
    llm: str,
    vision: str,
    audio: str,
    output_dir: str | Path,
    dtype: str = "bfloat16",
    max_shard_size: str = "2GB",
    repo_id: str | None = None,
    audio_conv_kernel: int = 40,
    audio_conv_stride: int = 3,
    dry_run: bool = False,
    credit_names: dict[str, str] | None = None,
) -> BuildReport:
    """Compose the checkpoint (or, with `dry_run`, only say what would be built).

    `credit_names` maps "llm", "vision", "audio" to the Hub ids the model card credits when the
    parts are read from local folders.
    """
    credit_names = credit_names or {}
    output_dir = Path(output_dir)
    steps = tqdm(total=6, desc="mmmmodal build", unit="step", disable=dry_run)
    processor, tokens_before, added = build_processor(llm, vision, audio, audio_conv_kernel, audio_conv_stride)
    vocab = len(processor.tokenizer)
    steps.update()

    if dry_run:
        text_config = AutoConfig.from_pretrained(llm)
        text_config.vocab_size = max(vocab, text_config.vocab_size)
        audio_config = AutoConfig.from_pretrained(audio)
        config = build_config(
            processor, text_config, _vision_config(vision), audio_config, audio_conv_kernel, audio_conv_stride
        )
        counts = parameter_counts(config)
        size_gb = counts["total"] * DTYPE_BYTES.get(dtype, 4) / 1e9
        files = _expected_files(size_gb, max_shard_size)
        return BuildReport(output_dir, counts, added, files, dry_run=True)

    torch_dtype = getattr(torch, dtype)
    steps.set_postfix_str("language model")
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=torch_dtype)
    steps.update()
    steps.set_postfix_str("SigLIP vision tower")
    vision_tower = SiglipVisionModel.from_pretrained(vision, dtype=torch_dtype)  # the text tower is not loaded
    steps.update()
    steps.set_postfix_str("Whisper encoder")
    audio_tower = AutoModel.from_pretrained(audio, dtype=torch_dtype).get_encoder()  # the decoder is dropped
    steps.update()

    steps.set_postfix_str("assemble")
    config = build_config(
        processor, language_model.config, vision_tower.config, audio_tower.config, audio_conv_kernel, audio_conv_stride
    )
    with torch.device("meta"):
        model = MMMModalForConditionalGeneration(config)
    # The loaded parts move in whole, each tower cut at its feature layer; only the projectors are new
    # (PyTorch's default init, as published).
    dropped, cuts = {}, tower_cuts(config)
    for kind, tower in (("vision", vision_tower), ("audio", audio_tower)):
        removed = trim_tower(tower, *cuts[kind])
        dropped.update({f"{kind} tower {part}": count for part, count in removed.items()})
    model.model.vision_tower = vision_tower
    model.model.audio_tower = audio_tower
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    model.model.image_projector = MMMModalImageProjector(config).to(torch_dtype)
    model.model.audio_projector = MMMModalAudioProjector(config).to(torch_dtype)
    resize_token_embeddings_to_mean(model, tokens_before, vocab)
    model.generation_config = language_model.generation_config
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.suppress_slot_tokens()
    max_positions = getattr(language_model.config, "max_position_embeddings", None)
    if max_positions and processor.tokenizer.model_max_length > max_positions:
        processor.tokenizer.model_max_length = max_positions
    steps.update()

    steps.set_postfix_str("save")
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(output_dir)
    render_model_card(
        output_dir,
        repo_id=repo_id or output_dir.name,
        text_model=credit_names.get("llm", llm),
        vision_model=credit_names.get("vision", vision),
        audio_model=credit_names.get("audio", audio),
        summary="This checkpoint is **untrained**: its projectors are freshly initialised. "
        "Train it with `mmmmodal train --stage align`, then `--stage finetune`.",
        training="None yet: composed by `mmmmodal build` from the three parts above. The published recipe: "
        "stage 1 (align) trains the projectors and tag embeddings with everything else frozen "
        "(lr 1e-4, 3% warmup, 3 epochs, bf16, block 2048); stage 2 (finetune) trains the language model "
        "and projectors with the encoders frozen (lr 2e-5 constant, bf16, DeepSpeed ZeRO-2 with CPU "
        "optimizer offload, block 8192).",
        extra_limits="- Untrained: it does not yet understand images or audio.",
    )
    steps.update()
    steps.close()
    files = sorted(p.name for p in output_dir.iterdir())
    return BuildReport(output_dir, parameter_counts(config), added, files, dropped=dropped)


def _expected_files(size_gb: float, max_shard_size: str) -> list[str]:
    limit = _parse_size_gb(max_shard_size)
    shards = max(1, int(-(-size_gb // limit)))
    weights = (
        ["model.safetensors"]
        if shards == 1
        else [
            *(f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)),
            "model.safetensors.index.json",
        ]
    )
    return sorted(
        [
            *weights,
            "config.json",
            "generation_config.json",
            "processor_config.json",
            "chat_template.jinja",
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
            "configuration_mmmmodal.py",
            "modeling_mmmmodal.py",
            "processing_mmmmodal.py",
            "media_mmmmodal.py",
        ]
    )


_SIZE_UNITS = {"TB": 1e3, "GB": 1.0, "MB": 1e-3, "KB": 1e-6}  # as `save_pretrained`'s `max_shard_size` reads them


def _parse_size_gb(text: str) -> float:
    """A shard size such as `2GB` or `500MB` in GB; `ValueError` for what `save_pretrained` would refuse."""
    number, unit = text.strip()[:-2], text.strip()[-2:].upper()
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"a size such as 2GB or 500MB (units: {', '.join(_SIZE_UNITS)}); got {text!r}") from None
    if not 0 < size < float("inf"):
        raise ValueError(f"a positive size; got {text!r}")
    return size


def shard_size(text: str) -> str:
    """An argparse `type` for `--max-shard-size`: the text as given, once it reads as a size."""
    try:
        _parse_size_gb(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal build", __doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the published parts as defaults")
    parser.add_argument("--llm", help="causal LM: Hub id or folder")
    parser.add_argument("--vision", help="SigLIP model: Hub id or folder")
    parser.add_argument("--audio", help="Whisper model: Hub id or folder")
    parser.add_argument("--output-dir", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--repo-id", type=hub_repo_id, help="the Hub repo the card's usage snippet names")
    for part in ("llm", "vision", "audio"):
        parser.add_argument(f"--{part}-name", help=f"Hub id the model card credits for --{part} given as a folder")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="dtype to store the weights in"
    )
    parser.add_argument("--max-shard-size", default="2GB", type=shard_size,
                        help="largest safetensors file; bigger models are sharded")  # fmt: skip
    parser.add_argument(
        "--audio-conv-kernel",
        type=positive(int),
        default=40,
        help="the audio projector's Conv1d kernel (published: 40)",
    )
    parser.add_argument(
        "--audio-conv-stride", type=positive(int), default=3, help="the audio projector's Conv1d stride (published: 3)"
    )
    parser.add_argument(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="say what would be built; write nothing",
    )
    return parser


_PART_KINDS = {"llm": "a causal language model", "vision": "a SigLIP model", "audio": "a Whisper model"}


def check_sources(parts: dict[str, str]) -> None:
    """Each part's config, read before anything is built, so one that cannot be read (offline, a typo) or is of
    another kind (a Whisper folder given as the LM) is named in one line."""
    for role, kind in _PART_KINDS.items():
        try:
            config = AutoConfig.from_pretrained(parts[role])
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read --{role} {parts[role]}: {why_unloadable(parts[role], error)}") from None
        fits = {
            "llm": config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not config.is_encoder_decoder,
            "vision": config.model_type in ("siglip", "siglip_vision_model"),
            "audio": config.model_type == "whisper",
        }[role]
        if not fits:
            raise InputError(f"--{role} {parts[role]} is a {config.model_type} model; it must be {kind}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = dict(PRESETS.get(args.preset, {}))
    for name in ("llm", "vision", "audio", "repo_id"):
        if getattr(args, name):
            parts[name] = getattr(args, name)
    missing = [name for name in ("llm", "vision", "audio") if not parts.get(name)]
    if missing:
        build_parser().error(f"give --preset or all of --llm, --vision, --audio (missing: {', '.join(missing)})")
    try:
        check_sources(parts)
    except InputError as error:
        print(f"mmmmodal build: {error}", file=sys.stderr)
        return 1
    report = build_checkpoint(
        parts["llm"],
        parts["vision"],
        parts["audio"],
        args.output_dir,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        repo_id=parts.get("repo_id"),
        audio_conv_kernel=args.audio_conv_kernel,
        audio_conv_stride=args.audio_conv_stride,
        dry_run=args.dry_run,
        credit_names={
            part: getattr(args, f"{part}_name") for part in ("llm", "vision", "audio") if getattr(args, f"{part}_name")
        },
    )
    print(report.summary())
    if args.dry_run:
        print(json.dumps({"parameters": report.parameters, "files": report.files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
