"""Tiny real parts for tests: real transformers classes with small configs, the real Mistral tokenizer."""

from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile
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

# Tests that need a GPU run where one is (as transformers' `require_torch_accelerator`); CI has none.
requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="checks the model on a CUDA GPU against the CPU; this machine has none (pytest tests/test_cuda.py on one)",
)
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]  # a test parametrized over them runs on each
IMAGE_SIZE, PATCH_SIZE = 32, 8  # 16 image slots
MAX_SOURCE_POSITIONS = 50  # 100 mel frames = 1 s window at 16 kHz
AUDIO_CONV_KERNEL, AUDIO_CONV_STRIDE = 4, 3  # (50 - 4) // 3 + 1 = 16 audio slots per window
IMAGE_SLOTS, AUDIO_SLOTS_PER_WINDOW = 16, 16
# A default 0.6 s clip: 60 mel frames -> 30 encoder frames -> ceil(30 / 3) = 10 slots start in real audio.
CLIP_SLOTS = 10


def tiny_vision_config(**overrides) -> SiglipVisionConfig:
    values = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return SiglipVisionConfig(**{**values, **overrides})


def tiny_siglip_config():
    """A full SigLIP (text tower included), as the released checkpoints and google/siglip-* hold."""
    from transformers import SiglipConfig, SiglipTextConfig

    text = SiglipTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
        max_position_embeddings=16,
    )
    return SiglipConfig(text_config=text.to_dict(), vision_config=tiny_vision_config().to_dict())


def tiny_audio_config(**overrides) -> WhisperConfig:
    values = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=MAX_SOURCE_POSITIONS,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        max_target_positions=16,
    )
    return WhisperConfig(**{**values, **overrides})


def tiny_text_config(vocab_size: int, **overrides) -> LlamaConfig:
    values = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaConfig(**{**values, **overrides})


def tiny_processor(tokenizer_folder: Path) -> MMMModalProcessor:
    return MMMModalProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=1),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_folder),
        patch_size=PATCH_SIZE,
        audio_conv_kernel=AUDIO_CONV_KERNEL,
        audio_conv_stride=AUDIO_CONV_STRIDE,
    )


def tiny_config(processor: MMMModalProcessor, config_class=MMMModalConfig, **overrides) -> MMMModalConfig:
    tokenizer = processor.tokenizer
    values = dict(
        vision_config=tiny_vision_config(),
        audio_config=tiny_audio_config(),
        text_config=tiny_text_config(len(tokenizer)),
        audio_conv_kernel=AUDIO_CONV_KERNEL,
        audio_conv_stride=AUDIO_CONV_STRIDE,
        **processor.special_token_ids,
    )
    return config_class(**{**values, **overrides})


def random_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def random_clip(seed: int, seconds: float = 0.6, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def two_turn_chat():
    """2 images and 2 clips over 2 user turns, with an assistant answer between them."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_image(1)},
                {"type": "audio", "audio": random_clip(2)},
                {"type": "text", "text": "Apa warna bentuk dalam gambar ini?"},
            ],
        },
        {"role": "assistant", "content": "Merah."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_image(3)},
                {"type": "audio", "audio": random_clip(4)},
                {"type": "text", "text": "And which clip is higher?"},
            ],
        },
    ]


def write_tiny_dataset(folder: Path, rows: int = 8, kinds=("image", "audio", "mixed", "text"), seed: int = 0) -> Path:
    """A JSONL file of published-format rows with real PNG and WAV files beside it.

    Row i is of kind `kinds[i % len(kinds)]`: one image, one clip, an image and a clip over two
    turns, or text only.
    """
    import json

    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(rows):
        kind = kinds[index % len(kinds)]
        image, clip = f"img_{index}.png", f"clip_{index}.wav"
        if kind in ("image", "mixed"):
            random_image(seed * 1000 + index).save(folder / image)
        if kind in ("audio", "mixed"):
            soundfile.write(folder / clip, random_clip(seed * 1000 + index), 16000)
        if kind == "image":
            row = {
                "conversations": [
                    {"role": "user", "content": "<image> </image> Apa warna ini?"},
                    {"role": "assistant", "content": f"Warna nombor {index}."},
                ],
                "filename": [image],
            }
        elif kind == "audio":
            row = {
                "conversations": [
                    {"role": "user", "content": "<audio> </audio> What is this sound?"},
                    {"role": "assistant", "content": f"Tone number {index}."},
                ],
                "filename": [clip],
            }
        elif kind == "mixed":
            row = {
                "conversations": [
                    {"role": "user", "content": "<image> </image> Describe."},
                    {"role": "assistant", "content": "A picture."},
                    {"role": "user", "content": "<audio> </audio> And this?"},
                    {"role": "assistant", "content": f"Sound {index}."},
                ],
                "filename": [image, clip],
            }
        else:
            row = {
                "conversations": [
                    {"role": "user", "content": f"Berapa {index} tambah satu?"},
                    {"role": "assistant", "content": f"{index + 1}."},
                ]
            }
        lines.append(json.dumps(row))
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_tiny_source_models(folder: Path, tokenizer_folder: Path, language_model: str = "llama") -> dict[str, Path]:
    """Tiny checkpoints of the real source architectures, as `mmmmodal build` reads them from the Hub.

    A causal LM (Llama or Mistral) with the Mistral tokenizer, a full SiglipModel (text tower
    included) with its image processor, and a full WhisperForConditionalGeneration (decoder
    included) with its feature extractor.
    """
    import torch
    from transformers import (
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        SiglipModel,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    paths = {name: folder / name for name in ("llm", "siglip", "whisper")}
    if language_model == "llama":
        lm = LlamaForCausalLM(tiny_text_config(32000))
    else:
        values = tiny_text_config(32000).to_dict()
        values.pop("model_type", None)
        lm = MistralForCausalLM(MistralConfig(**{k: v for k, v in values.items() if k in MistralConfig().to_dict()}))
    lm.save_pretrained(paths["llm"])
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(paths["llm"])

    SiglipModel(tiny_siglip_config()).save_pretrained(paths["siglip"])
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(paths["siglip"])

    WhisperForConditionalGeneration(tiny_audio_config()).save_pretrained(paths["whisper"])
    WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(paths["whisper"])
    return paths


def tiny_model(processor, **overrides) -> MMMModalForConditionalGeneration:
    """The tiny published model; with `media_index_embeddings` or `previous_token_mix`, the demo's model."""
    torch.manual_seed(0)
    demo_options = {k: overrides.pop(k) for k in ("media_index_embeddings", "previous_token_mix") if k in overrides}
    if demo_options:
        from mmmmodal_hf.demo.remote_code import MMMModalDemoConfig, MMMModalDemoForConditionalGeneration

        config = tiny_config(processor, config_class=MMMModalDemoConfig, **overrides, **demo_options)
        model = MMMModalDemoForConditionalGeneration(config).eval()
    else:
        model = MMMModalForConditionalGeneration(tiny_config(processor, **overrides)).eval()
    # Random init leaves the projectors tiny next to token embeddings; scale them so media matter to the logits.
    with torch.no_grad():
        for projector in (model.model.image_projector, model.model.audio_projector):
            for parameter in projector.parameters():
                parameter.mul_(4.0)
    return model


def package_patches(model) -> list[str]:
    """Hooks, replaced `forward`s and attributes that this package put on `model`'s modules and weights."""
    found = []
    for name, module in model.named_modules():
        hooks = [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks]
        found += [f"{name}: hook {hook}" for hook in (h for group in hooks for h in group.values()) if ours(hook)]
        if "forward" in vars(module):
            found.append(f"{name}: forward replaced by {vars(module)['forward']}")
    for name, parameter in model.named_parameters():
        hooks = [*(parameter._backward_hooks or {}).values(), *(parameter._post_accumulate_grad_hooks or {}).values()]
        found += [f"{name}: gradient hook {hook}" for hook in hooks if ours(hook)]
        found += [f"{name}: attribute {key}" for key in vars(parameter) if "mmmmodal" in key]
    return found


def ours(function) -> bool:
    return getattr(function, "__module__", "").startswith("mmmmodal_hf")


@contextmanager
def decodes():
    """Counts the files Pillow, libsndfile and PyAV open (the real ones, watched), by file name."""
    opened = Counter()

    def watched(real):
        return lambda source, *args, **kwargs: (
            opened.update([Path(str(source)).name]),
            real(source, *args, **kwargs),
        )[1]

    with ExitStack() as watching:
        watching.enter_context(mock.patch.object(Image, "open", watched(Image.open)))
        watching.enter_context(mock.patch.object(soundfile, "SoundFile", watched(soundfile.SoundFile)))
        try:
            import av
        except ImportError:  # no videos without PyAV
            av = None
        if av is not None:
            watching.enter_context(mock.patch.object(av, "open", watched(av.open)))
        yield opened
