"""What the vLLM tests share: a tiny folder vLLM's CPU attention accepts, media files, and `generate`'s answer."""

import base64
import os
from pathlib import Path

import soundfile
import torch

from tiny_parts import random_clip, random_image, tiny_model, tiny_processor, tiny_text_config

# vLLM's CPU build: a 1 GiB KV cache, and media decoded by the processor's loaders, as `mmmmodal serve` sets them.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_MEDIA_CONNECTOR", "mmmmodal")
NEW_TOKENS = 8
# float32 end to end, one engine per module; vLLM's CPU attention needs head_dim >= 32 (64 / 2 heads).
ENGINE_SETTINGS = dict(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.5, enforce_eager=True)


def save_served_folder(folder: Path, tokenizer_folder: Path) -> Path:
    processor = tiny_processor(tokenizer_folder)
    text_config = tiny_text_config(len(processor.tokenizer), num_attention_heads=2, num_key_value_heads=2)
    tiny_model(processor, text_config=text_config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_media(folder: Path) -> dict[str, Path]:
    """PNG and WAV files (one at 44.1 kHz, one longer than the tiny model's 1 s window) as a user sends them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, seed, size in (("red", 0, (40, 30)), ("wide", 1, (64, 20)), ("small", 2, (24, 24))):
        files[name] = folder / f"{name}.png"
        random_image(seed, size).save(files[name])
    for name, seed, seconds, rate in (("beep", 3, 0.6, 16000), ("long", 4, 2.5, 16000), ("cd", 5, 0.8, 44100)):
        files[name] = folder / f"{name}.wav"
        soundfile.write(files[name], random_clip(seed, seconds, rate), rate, subtype="FLOAT")
    return files


def data_url(path: Path) -> str:
    kind = "image/png" if path.suffix == ".png" else "audio/wav"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def openai_chat(turns: list) -> list[dict]:
    """OpenAI messages from turns of (role, [text or media path, ...]): `image_url` and `input_audio` parts."""
    messages = []
    for role, parts in turns:
        content = []
        for part in parts:
            if isinstance(part, Path) and part.suffix == ".png":
                content.append({"type": "image_url", "image_url": {"url": data_url(part)}})
            elif isinstance(part, Path):
                data = base64.b64encode(part.read_bytes()).decode()
                content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
            else:
                content.append({"type": "text", "text": part})
        messages.append({"role": role, "content": content if role == "user" else parts[0]})
    return messages


def processor_chat(turns: list) -> list[dict]:
    """The same turns as transformers' content blocks (`image` / `audio` paths)."""
    messages = []
    for role, parts in turns:
        if role != "user":
            messages.append({"role": role, "content": parts[0]})
            continue
        blocks = []
        for part in parts:
            if isinstance(part, Path):
                kind = "image" if part.suffix == ".png" else "audio"
                blocks.append({"type": kind, "path": str(part)})
            else:
                blocks.append({"type": "text", "text": part})
        messages.append({"role": "user", "content": blocks})
    return messages


class Reference:
    """`generate(do_sample=False)` on the same folder, loaded as users load it."""

    def __init__(self, folder: Path):
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        self.model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()

    def tokens(self, inputs) -> tuple[list[int], list[int]]:
        """(prompt ids, greedy new tokens) for processor outputs."""
        generated = self.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        prompt = inputs["input_ids"][0].tolist()
        return prompt, generated[0, len(prompt) :].tolist()

    def prompt(self, text: str, images=(), audio=()) -> tuple[list[int], list[int]]:
        inputs = self.processor(text=text, images=list(images) or None, audio=list(audio) or None, return_tensors="pt")
        return self.tokens(inputs)

    def chat(self, turns: list) -> tuple[list[int], list[int]]:
        inputs = self.processor.apply_chat_template(
            processor_chat(turns), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return self.tokens(inputs)


def truncated_wav(path: Path) -> str:
    """Base64 of a WAV cut off after a third of its bytes: its header promises more samples than it holds."""
    data = path.read_bytes()
    return base64.b64encode(data[: len(data) // 3]).decode()
