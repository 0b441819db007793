"""Load a saved folder the way a Hub user would: in a new process where `mmmmodal_hf` cannot be imported."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from safetensors.torch import load_file

# Starts every child script: `mmmmodal_hf` is made unimportable, so only the code in the folder can serve.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import sys, importlib.abc

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmmmodal_hf" or name.startswith("mmmmodal_hf."):
                raise ImportError("mmmmodal_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockPackage())
    try:
        import mmmmodal_hf  # noqa: F401
        raise SystemExit("mmmmodal_hf should not be importable here")
    except ImportError:
        pass
    """
)

FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import numpy as np, torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

    folder, media_folder, out_file = sys.argv[1:4]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    chat = [
        {"role": "user", "content": [
            {"type": "image", "path": f"{media_folder}/a.png"},
            {"type": "audio", "path": f"{media_folder}/a.wav"},
            {"type": "text", "text": "Apa ini?"}]},
        {"role": "assistant", "content": "Bulatan merah."},
        {"role": "user", "content": [{"type": "image", "path": f"{media_folder}/b.png"}, {"type": "text", "text": "Dan ini?"}]},
    ]
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    results = {"input_ids": inputs["input_ids"]}
    for name, auto_class in (("auto_model", AutoModel), ("auto_causal_lm", AutoModelForCausalLM)):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert "MMMModalForConditionalGeneration" in [c.__name__ for c in type(model).__mro__], type(model)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            results[f"{name}_logits"] = model(**inputs).logits
            results[f"{name}_generated"] = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    results["processor_module"] = torch.tensor([type(processor).__module__.startswith("transformers_modules.")])
    save_file({k: v.contiguous() for k, v in results.items()}, out_file)
    """
)


def run_in_fresh_process(script: str, folder: Path | str, work_folder: Path, env: dict | None = None) -> dict:
    """Run `script` in a child process that cannot import `mmmmodal_hf`; return the tensors it saved.

    The script gets `sys.argv[1:4]` = folder (or a Hub id), work folder, and the safetensors file to save its
    results in. `env` adds to (or overrides) the child's environment, which is offline unless it says otherwise.
    """
    out_file = Path(work_folder) / "fresh_process_results.safetensors"
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(Path(work_folder) / "hf_modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        **(env or {}),
    }
    completed = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + script, str(folder), str(work_folder), str(out_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=work_folder,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return load_file(out_file)


def load_in_fresh_process(folder: Path | str, media_folder: Path, env: dict | None = None) -> dict:
    """AutoProcessor + AutoModel + AutoModelForCausalLM (trust_remote_code) on `folder` (or a Hub id), in a
    child process.

    `media_folder` must hold a.png, b.png and a.wav. Returns the child's input ids, logits and
    greedy generations for a fixed two-turn chat over those files.
    """
    return run_in_fresh_process(FRESH_PROCESS_SCRIPT, folder, media_folder, env)


def fresh_process_chat(media_folder: Path) -> list[dict]:
    """The conversation the child process runs, for comparing in this process."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(Path(media_folder) / "a.png")},
                {"type": "audio", "path": str(Path(media_folder) / "a.wav")},
                {"type": "text", "text": "Apa ini?"},
            ],
        },
        {"role": "assistant", "content": "Bulatan merah."},
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(Path(media_folder) / "b.png")},
                {"type": "text", "text": "Dan ini?"},
            ],
        },
    ]


def write_fresh_process_media(media_folder: Path) -> Path:
    import soundfile

    from tiny_parts import random_clip, random_image

    random_image(1).save(Path(media_folder) / "a.png")
    random_image(2).save(Path(media_folder) / "b.png")
    soundfile.write(Path(media_folder) / "a.wav", random_clip(3), 16000)
    return Path(media_folder)
