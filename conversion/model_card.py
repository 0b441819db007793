"""The model card: `hub_templates/model_card.md` rendered with the real facts of a built folder."""

from importlib import resources
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor

# base_model too where there is one; a model trained from scratch (the demo's) has none.
REQUIRED_METADATA = ("language", "license", "pipeline_tag", "library_name")


def human_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def parameter_counts(config: MMMModalConfig) -> dict[str, int]:
    """Parameters per part, counted on the meta device (no memory, no weights needed)."""
    with torch.device("meta"):
        model = MMMModalForConditionalGeneration(config)
    parts = {
        "vision_tower": model.model.vision_tower,
        "audio_tower": model.model.audio_tower,
        "image_projector": model.model.image_projector,
        "audio_projector": model.model.audio_projector,
        "language_model": model.model.language_model,
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    if not config.tie_word_embeddings:
        counts["language_model"] += model.lm_head.weight.numel()
    counts["total"] = sum(counts.values())
    return counts


def render_model_card(
    folder: str | Path,
    repo_id: str,
    text_model: str | None,
    vision_model: str | None,
    audio_model: str | None,
    training: str,
    summary: str = "",
    license: str = "apache-2.0",
    extra_limits: str = "",
    base_models: list[str] | None = None,
) -> ModelCard:
    """Write README.md into `folder` and return the card (its metadata checked by `check_card`).

    `text_model`, `vision_model`, `audio_model`: where the three parts came from (None: not known, e.g.
    built from configs and trained from scratch, as the demo's are), kept in the card's `mmmmodal_parts` so a
    later stage's card can credit them again. `base_models` (the card's `base_model`) defaults to
    those of the three that are Hub ids; a part read from a local folder has no Hub id to credit.
    """
    folder = Path(folder)
    # Read as the published config whichever subclass wrote it (the demo's adds fields the card does not count),
    # without from_pretrained's warning that the folder's model type is another.
    config = MMMModalConfig.from_dict(MMMModalConfig.get_config_dict(folder)[0])
    processor = MMMModalProcessor.from_pretrained(folder, trust_remote_code=True)  # a folder this package wrote
    counts = parameter_counts(config)
    image_size = processor.image_processor.size
    parts = {"language_model": text_model, "vision": vision_model, "audio": audio_model}
    if base_models is None:
        base_models = [name for name in parts.values() if name and not Path(name).exists()]
    card_data = ModelCardData(
        language=["en", "ms"],
        license=license,
        library_name="transformers",
        pipeline_tag="any-to-any",
        base_model=base_models or None,
        tags=["mmmmodal", "multimodal", "siglip", "whisper", "malay", "custom_code"],
        model_name=repo_id.split("/")[-1],
        mmmmodal_parts=parts,
    )
    with resources.as_file(resources.files("mmmmodal_hf.hub_templates") / "model_card.md") as template:
        card = ModelCard.from_template(
            card_data,
            template_path=str(template),
            model_name=repo_id.split("/")[-1],
            repo_id=repo_id,
            summary=summary,
            text_model=text_model,
            vision_model=vision_model,
            audio_model=audio_model,
            params={name: human_count(value) for name, value in counts.items()},
            vision_feature_layer=config.vision_feature_layer,
            audio_feature_layer=config.audio_feature_layer,
            audio_conv_kernel=config.audio_conv_kernel,
            audio_conv_stride=config.audio_conv_stride,
            image_slots=processor.num_image_slots(image_size["height"], image_size["width"]),
            image_size=image_size["height"],
            patch_size=processor.patch_size,
            audio_slots=processor.audio_slots_per_window,
            audio_window_seconds=processor.feature_extractor.chunk_length,
            training=training,
            extra_limits=extra_limits,
        )
    card.save(folder / "README.md")
    return card


def render_trained_model_card(folder: str | Path, start: str, training: str) -> ModelCard:
    """The card of a folder trained from `start` (a folder or Hub id): its parts credited as `start`'s card does.

    `base_model` is `start` when it is a Hub id (the model this one was trained from), else what
    `start`'s own card credits; a start without a card (a model built from configs) credits none.
    """
    start_card = Path(start) / "README.md"
    data = ModelCard.load(start_card).data.to_dict() if start_card.is_file() else {}
    parts = data.get("mmmmodal_parts") or {}
    is_hub_id = not Path(start).exists()
    return render_model_card(
        folder,
        repo_id=Path(folder).name,
        text_model=parts.get("language_model"),
        vision_model=parts.get("vision"),
        audio_model=parts.get("audio"),
        training=training,
        summary=f"Trained from `{start}` with this package (below).",
        base_models=[start] if is_hub_id else list(data.get("base_model") or []),
    )


def check_card(path: str | Path) -> ModelCard:
    """Parse a README.md with huggingface_hub's card classes; raise if required metadata is missing."""
    card = ModelCard.load(path)
    data = card.data.to_dict()
    missing = [key for key in REQUIRED_METADATA if not data.get(key)]
    if missing:
        raise ValueError(f"{path}: the model card metadata lacks {', '.join(missing)}")
    if not {"en", "ms"} <= set(data["language"]):
        raise ValueError(f"{path}: the model card should list languages en and ms; got {data['language']}")
    return card
