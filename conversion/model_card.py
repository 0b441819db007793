"""The model card: `hub_templates/model_card.md` rendered with the real facts of a built folder."""

from importlib import resources
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor

REQUIRED_METADATA = ("language", "license", "base_model", "pipeline_tag", "library_name")


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
    text_model: str,
    vision_model: str,
    audio_model: str,
    training: str,
    summary: str = "",
    license: str = "apache-2.0",
    extra_limits: str = "",
) -> ModelCard:
    """Write README.md into `folder` and return the card (its metadata checked by `check_card`)."""
    folder = Path(folder)
    config = MMMModalConfig.from_pretrained(folder)
    processor = MMMModalProcessor.from_pretrained(folder)
    counts = parameter_counts(config)
    image_size = processor.image_processor.size
    # A part read from a local folder has no Hub id to credit; the card then omits it from base_model.
    base_models = [name for name in (text_model, vision_model, audio_model) if not Path(name).exists()]
    card_data = ModelCardData(
        language=["en", "ms"],
        license=license,
        library_name="transformers",
        pipeline_tag="any-to-any",
        base_model=base_models or None,
        tags=["mmmmodal", "multimodal", "siglip", "whisper", "malay", "custom_code"],
        model_name=repo_id.split("/")[-1],
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
