"""Convert a released MMMModal checkpoint (published layout) into this package's layout.

    mmmmodal convert mesolitica/malaysian-tinyllama-1.1b-mmmmodal --output-dir tinyllama-mmmmodal

The published layout (`model_type="mm_llms"`): `image_encoder.*` a full SiglipModel,
`audio_encoder.*` a full WhisperModel, `llm.*` a causal LM with its head,
`image_projector.linear_1|linear_2` (Linear, Linear) and `audio_projector.linear_1|linear_2`
(Conv1d, Linear). The SigLIP text tower (and its contrastive logit scale and bias), the
Whisper decoder, and the encoder parts after the feature layer (the last layer, final norms,
SigLIP's pooling head) are dropped; everything else is mapped. Every dropped key and every key that
could not be mapped is reported: none is lost silently, and unmapped keys stop the conversion.
Only safetensors are read: a checkpoint with pickled weights only is refused.
"""

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
from mmmmodal_hf.cli_errors import loading, local_path
from mmmmodal_hf.cli_help import command_parser, hub_repo_id
from mmmmodal_hf.conversion.build import PRESETS, mean_initialise_new_rows
from mmmmodal_hf.conversion.model_card import render_model_card

# (published pattern, our replacement); the first match wins. None means: dropped on purpose.
KEY_RULES: list[tuple[str, str | None, str]] = [
    (r"^image_encoder\.vision_model\.(.*)$", r"model.vision_tower.\1", "SigLIP vision tower"),
    (r"^image_encoder\.text_model\..*$", None, "SigLIP text tower"),
    (r"^image_encoder\.logit_(scale|bias)$", None, "SigLIP text-image contrastive head"),
    (r"^audio_encoder\.encoder\.(.*)$", r"model.audio_tower.\1", "Whisper encoder"),
    (r"^audio_encoder\.decoder\..*$", None, "Whisper decoder"),
    (r"^llm\.model\.(.*)$", r"model.language_model.\1", "language model"),
    (r"^llm\.lm_head\.weight$", "lm_head.weight", "language model head"),
    (r"^image_projector\.linear_1\.(weight|bias)$", r"model.image_projector.linear_1.\1", "image projector"),
    (r"^image_projector\.linear_2\.(weight|bias)$", r"model.image_projector.linear_2.\1", "image projector"),
    (r"^audio_projector\.linear_1\.(weight|bias)$", r"model.audio_projector.conv.\1", "audio projector (Conv1d)"),
    (r"^audio_projector\.linear_2\.(weight|bias)$", r"model.audio_projector.linear.\1", "audio projector"),
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class UnmappedKeys(ValueError):
    """The source holds weights this converter does not know where to put."""


@dataclass
class ConversionReport:
    output_dir: Path
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"mapped {len(self.mapped)} tensors into {self.output_dir}"]
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"dropped {count} tensors of the {reason}" for reason, count in sorted(reasons.items())]
        lines += [f"UNMAPPED {key}" for key in self.unmapped]
        lines += [f"MISSING {key}" for key in self.missing]
        return "\n".join(lines)


def map_key(key: str) -> tuple[str | None, str]:
    """Our name for a published key (None if dropped), and what part it belongs to; KeyError if unknown."""
    for pattern, replacement, part in KEY_RULES:
        if re.match(pattern, key):
            return (re.sub(pattern, replacement, key) if replacement else None), part
    raise KeyError(key)


def resolve_source(source: str) -> Path:
    """A local folder as is; a Hub id downloaded (configs, tokenizer, safetensors only)."""
    from huggingface_hub import snapshot_download

    with loading(source, "a released checkpoint"):
        if local_path(source) is not None:
            return Path(source).expanduser()
        return Path(
            snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{folder} holds only pickled weights ({', '.join(pickled)}); loading them could run arbitrary "
                "code, so they are refused. Convert them to safetensors in a sandbox first."
            )
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return files


def published_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "mm_llms":
        raise ValueError(f"{folder}: expected the published model_type 'mm_llms', got {config.get('model_type')!r}")
    return config


def our_config(published: dict, processor: MMMModalProcessor) -> MMMModalConfig:
    image_config = published["image_config"]
    vision_config = image_config.get("vision_config", image_config)
    vision_config = {**vision_config, "model_type": "siglip_vision_model"}
    return MMMModalConfig(
        vision_config=vision_config,
        audio_config={**published["audio_config"], "model_type": "whisper"},
        text_config={**published["llm_config"], "vocab_size": len(processor.tokenizer)},
        vision_feature_layer=published.get("vision_select_layer", -2),
        audio_feature_layer=published.get("audio_select_layer", -2),
        audio_conv_kernel=processor.audio_conv_kernel,
        audio_conv_stride=processor.audio_conv_stride,
        trim_audio_padding=processor.trim_audio_padding,
        **processor.special_token_ids,
        tie_word_embeddings=published["llm_config"].get("tie_word_embeddings", False),
    )


def convert_checkpoint(
    source: str,
    output_dir: str | Path,
    vision_processor: str = PRESETS["tinyllama"]["vision"],
    audio_processor: str = PRESETS["tinyllama"]["audio"],
    repo_id: str | None = None,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
    dry_run: bool = False,
    credit_names: dict[str, str] | None = None,
) -> ConversionReport:
    """Map every tensor, write our layout, and check the result loads; see the module docstring."""
    folder = resolve_source(source)
    output_dir = Path(output_dir)
    published = published_config(folder)
    report = ConversionReport(output_dir)
    files = weight_files(folder)
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                try:
                    target, part = map_key(key)
                except KeyError:
                    report.unmapped.append(key)
                    continue
                if target is None:
                    report.dropped[key] = part
                else:
                    report.mapped[key] = target
    if report.unmapped:
        raise UnmappedKeys(f"{len(report.unmapped)} keys have no place in the MMMModal layout:\n" + report.summary())

    # The released tokenizer already holds the four tags; the slot tokens are added here.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens_before = len(tokenizer)
    processor = MMMModalProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_processor),
        feature_extractor=AutoFeatureExtractor.from_pretrained(audio_processor),
        tokenizer=tokenizer,
        patch_size=published["image_config"].get("vision_config", published["image_config"]).get("patch_size", 16),
        # The released models were trained with every clip padded to 30 s and all 487 slots filled.
        trim_audio_padding=False,
    )
    config = our_config(published, processor)
    # The context, where transformers keeps it and the processor reads it (a video that does not fit is named before
    # anything is encoded), as `mmmmodal build` sets it: the released tokenizers leave it unset.
    max_positions = getattr(config.text_config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    with torch.device("meta"):
        expected = set(MMMModalForConditionalGeneration(config).state_dict())
    # Tower weights the trimmed towers lack (layers after the feature layer, final norms, SigLIP's head).
    for key, target in list(report.mapped.items()):
        if target not in expected and target.startswith(("model.vision_tower.", "model.audio_tower.")):
            report.dropped[key] = "encoder parts after the feature layer"
            del report.mapped[key]
    report.missing = sorted(
        expected - set(report.mapped.values()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    )
    if dry_run:
        return report
    if report.missing:
        raise UnmappedKeys("the source lacks weights the model needs:\n" + report.summary())

    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        vocab = len(processor.tokenizer)
        for index, file in enumerate(tqdm(files, desc="mmmmodal convert", unit="shard")):
            tensors = {}
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    if key in report.mapped:
                        tensor = handle.get_tensor(key)
                        if report.mapped[key] in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                            tensor = mean_initialise_new_rows(tensor, tokens_before, max(vocab, tensor.shape[0]))
                        tensors[report.mapped[key]] = tensor
            save_file(tensors, staging / f"part-{index:05d}.safetensors", metadata={"format": "pt"})
        _write_index(staging, files)
        config.save_pretrained(staging)
        model = MMMModalForConditionalGeneration.from_pretrained(
            staging, dtype=getattr(torch, dtype) if dtype else None
        )
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(output_dir)
    credit_names = credit_names or {}
    render_model_card(
        output_dir,
        repo_id=repo_id or output_dir.name,
        text_model=credit_names.get("llm", published["llm_config"].get("_name_or_path", "unknown")),
        vision_model=credit_names.get("vision", vision_processor),
        audio_model=credit_names.get("audio", audio_processor),
        summary=f"Converted from `{source}` to the `mmmmodal-hf` layout: the same weights, without the SigLIP "
        "text tower and the Whisper decoder, loadable with `AutoModel` and `trust_remote_code=True`.",
        training="As published by Mesolitica (arXiv 2402.11297): stage 1 aligned the projectors with the encoders "
        "and the language model frozen (lr 1e-4, 3% warmup, 3 epochs, bf16, block 2048; vision and audio in two "
        "runs, then combined); stage 2 finetuned the language model and projectors on multi-image, multi-audio, "
        "multi-turn conversations with the encoders frozen (lr 2e-5 constant, bf16, DeepSpeed ZeRO-2 with CPU "
        "optimizer offload, block 8192).",
        extra_limits="- The published training masked no prompts: the loss covered whole conversations.",
    )
    return report


def _write_index(staging: Path, files: list[Path]) -> None:
    weight_map = {}
    for index in range(len(files)):
        name = f"part-{index:05d}.safetensors"
        with safe_open(staging / name, framework="pt") as handle:
            weight_map.update({key: name for key in handle.keys()})
    (staging / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal convert", __doc__)
    parser.add_argument("source", help="released checkpoint: Hub id or folder")
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--vision-processor",
        default=PRESETS["tinyllama"]["vision"],
        help="where the SigLIP image processor comes from",
    )
    parser.add_argument(
        "--audio-processor",
        default=PRESETS["tinyllama"]["audio"],
        help="where the Whisper feature extractor comes from",
    )
    parser.add_argument("--repo-id", type=hub_repo_id, help="the Hub repo the card's usage snippet names")
    parser.add_argument("--llm-name", help="Hub id the model card credits for the language model")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype to store the weights in (None: as the source)",
    )
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors file; bigger models are sharded")
    parser.add_argument(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="map and report every key; write nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = convert_checkpoint(
            args.source,
            args.output_dir,
            args.vision_processor,
            args.audio_processor,
            repo_id=args.repo_id,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            dry_run=args.dry_run,
            credit_names={"llm": args.llm_name} if args.llm_name else None,
        )
    except (UnmappedKeys, ValueError, FileNotFoundError) as error:
        print(f"mmmmodal convert: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.dry_run:
        print(json.dumps({"dropped": report.dropped, "unmapped": report.unmapped, "missing": report.missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
