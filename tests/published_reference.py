"""The published MMMModal, as `mesolitica/multimodal-LLM` (modeling_combine.py and its export notebooks) runs it.

Two things for tests that hold our package against the released checkpoints:
- `write_published_checkpoint`: a tiny checkpoint in the released layout (`model_type="mm_llms"`):
  a full SiglipModel, a full WhisperModel, a causal LM with its head, the two LLaVA-style projectors
  and the released tokenizer (Mistral's 32000 pieces plus the four tags at 32000-32003).
- `PublishedMMMModal`: the published inference path on such a checkpoint, written from that code and
  nothing of ours: the prompt tokenized as is, each medium's layer -2 features projected and inserted
  right after its opening tag's token (what follows, the lone `▁` and the closing tag, stays after
  them), the language model run on the embeddings with positions from 0.
"""

import json
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer, SiglipModel, WhisperModel

from tiny_parts import tiny_audio_config, tiny_siglip_config, tiny_text_config

RELEASED_TAGS = {"<image>": 32000, "</image>": 32001, "<audio>": 32002, "</audio>": 32003}
AUDIO_CONV_KERNEL, AUDIO_CONV_STRIDE = 40, 3  # the published audio projector's Conv1d, fixed in its code


def published_projectors(vision_width: int, audio_width: int, hidden_size: int) -> tuple[nn.Module, nn.Module]:
    """`image_projector` (Linear, GELU, Linear) and `audio_projector` (Conv1d k40 s3, GELU, Linear), as published."""
    image = nn.ModuleDict(
        {"linear_1": nn.Linear(vision_width, hidden_size), "linear_2": nn.Linear(hidden_size, hidden_size)}
    )
    audio = nn.ModuleDict(
        {
            "linear_1": nn.Conv1d(audio_width, hidden_size, kernel_size=AUDIO_CONV_KERNEL, stride=AUDIO_CONV_STRIDE),
            "linear_2": nn.Linear(hidden_size, hidden_size),
        }
    )
    return image, audio


def write_published_checkpoint(folder: Path, tokenizer_folder: Path, projector_scale: float = 1.0) -> dict:
    """What `mesolitica/*-mmmmodal` holds, tiny: returns the state dict as written (two safetensors shards).

    `projector_scale` multiplies the projectors' weights, so that random media move the logits visibly.
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    siglip = SiglipModel(tiny_siglip_config())
    whisper = WhisperModel(tiny_audio_config())
    llm = LlamaForCausalLM(tiny_text_config(32004))
    image_projector, audio_projector = published_projectors(32, 32, 64)
    with torch.no_grad():
        for parameter in [*image_projector.parameters(), *audio_projector.parameters()]:
            parameter.mul_(projector_scale)
    state = {}
    for prefix, module in (
        ("image_encoder", siglip),
        ("audio_encoder", whisper),
        ("llm", llm),
        ("image_projector", image_projector),
        ("audio_projector", audio_projector),
    ):
        state.update({f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()})
    if "llm.lm_head.weight" not in state:
        state["llm.lm_head.weight"] = llm.lm_head.weight.detach().clone()
    folder.mkdir(parents=True)
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mm_llms",
                "architectures": ["MM_LLMs"],
                "image_config": siglip.config.to_dict(),
                "audio_config": whisper.config.to_dict(),
                "llm_config": llm.config.to_dict(),
                "vision_select_layer": -2,
                "audio_select_layer": -2,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.add_tokens(list(RELEASED_TAGS), special_tokens=True)
    assert [tokenizer.convert_tokens_to_ids(tag) for tag in RELEASED_TAGS] == list(RELEASED_TAGS.values())
    tokenizer.save_pretrained(folder)
    return state


def _load_part(module: nn.Module, state: dict, prefix: str) -> nn.Module:
    part = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    module.load_state_dict(part, strict=True)
    return module.eval()


class PublishedMMMModal:
    """The released model's inference, one conversation at a time, on a folder `write_published_checkpoint` wrote.

    The image processor and feature extractor are the encoders' own (the released repos pointed
    users at them); media are read as the export notebooks did: `Image.open(f).convert("RGB")` and
    librosa's load at 16 kHz (libsndfile, then soxr at its "HQ" quality).
    """

    def __init__(self, folder: Path, vision_processor: Path, audio_processor: Path):
        from transformers import AutoConfig, LlamaForCausalLM

        config = json.loads((folder / "config.json").read_text())
        state = {}
        for shard in sorted(folder.glob("*.safetensors")):
            state.update(load_file(shard))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = AutoImageProcessor.from_pretrained(vision_processor)
        self.audio_processor = AutoFeatureExtractor.from_pretrained(audio_processor)
        image_config = AutoConfig.for_model(**config["image_config"])
        audio_config = AutoConfig.for_model(**config["audio_config"])
        llm_config = AutoConfig.for_model(**config["llm_config"])
        self.image_encoder = _load_part(SiglipModel(image_config), state, "image_encoder.")
        self.audio_encoder = _load_part(WhisperModel(audio_config), state, "audio_encoder.")
        self.llm = _load_part(LlamaForCausalLM(llm_config), state, "llm.")
        image_projector, audio_projector = published_projectors(
            image_config.vision_config.hidden_size, audio_config.d_model, llm_config.hidden_size
        )
        self.image_projector = _load_part(image_projector, state, "image_projector.")
        self.audio_projector = _load_part(audio_projector, state, "audio_projector.")
        self.vision_layer, self.audio_layer = config["vision_select_layer"], config["audio_select_layer"]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.image_encoder.vision_model(pixel_values, output_hidden_states=True).hidden_states[
            self.vision_layer
        ]
        projector = self.image_projector
        return projector["linear_2"](nn.functional.gelu(projector["linear_1"](hidden)))

    def encode_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = self.audio_encoder.encoder(input_features, output_hidden_states=True).hidden_states[self.audio_layer]
        projector = self.audio_projector
        convolved = projector["linear_1"](hidden.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return projector["linear_2"](nn.functional.gelu(convolved))

    def read_audio(self, path) -> np.ndarray:
        waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
        waveform = waveform.mean(axis=1) if waveform.shape[1] > 1 else waveform[:, 0]
        target = self.audio_processor.sampling_rate
        return waveform if rate == target else soxr.resample(waveform, rate, target, quality="HQ")

    def inputs_embeds(self, prompt: str, image_paths=(), audio_paths=()) -> tuple[list[int], torch.Tensor]:
        """The prompt's token ids and the embeddings the published code hands the language model."""
        ids = self.tokenizer(prompt)["input_ids"]
        image_features = audio_features = None
        if image_paths:
            images = [Image.open(path).convert("RGB") for path in image_paths]
            image_features = self.encode_image(
                self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            )
        if audio_paths:
            clips = [self.read_audio(path) for path in audio_paths]
            features = self.audio_processor(
                clips, sampling_rate=self.audio_processor.sampling_rate, return_tensors="pt"
            )
            audio_features = self.encode_audio(features["input_features"])
        embeddings = self.llm.get_input_embeddings()(torch.tensor(ids))
        pieces, image_index, audio_index = [], 0, 0
        for position, token in enumerate(ids):
            pieces.append(embeddings[position : position + 1])
            if token == RELEASED_TAGS["<image>"]:
                pieces.append(image_features[image_index])
                image_index += 1
            elif token == RELEASED_TAGS["<audio>"]:
                pieces.append(audio_features[audio_index])
                audio_index += 1
        assert image_index == len(image_paths) and audio_index == len(audio_paths), "a medium without its tag"
        return ids, torch.cat(pieces)[None]

    @torch.no_grad()
    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=torch.ones(inputs_embeds.shape[:2])).logits

    @torch.no_grad()
    def greedy(self, inputs_embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
        """The export notebooks' `model.llm.generate(inputs_embeds=..., attention_mask=...)`, greedy."""
        output = self.llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
        )
        return output[0].tolist()
