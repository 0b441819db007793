"""Prove a folder is a working Hub repo: load it in a fresh process that cannot import mmmmodal_hf."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# The child process sees only installed libraries and the code files inside the folder.
_CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmmmodal_hf" or name.startswith("mmmmodal_hf."):
                raise ImportError("mmmmodal_hf is not importable in this check")

    sys.meta_path.insert(0, BlockPackage())
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    folder = sys.argv[1]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    size = processor.image_processor.size
    image = Image.fromarray(np.full((size["height"], size["width"], 3), 128, dtype=np.uint8))
    clip = np.sin(np.arange(processor.feature_extractor.sampling_rate) / 8.0).astype(np.float32)
    chat = [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "audio", "audio": clip}, {"type": "text", "text": "Apa ini?"}]}]
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"sampling_rate": processor.feature_extractor.sampling_rate})
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    print(json.dumps({
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "processor_class": type(processor).__name__,
        "new_tokens": output.shape[1] - inputs["input_ids"].shape[1],
    }))
    """
)


class FolderDoesNotLoad(RuntimeError):
    """The folder failed to load or generate through AutoModel/AutoProcessor with trust_remote_code."""


def check_folder_loads(folder: str | Path, timeout: int = 3600) -> dict:
    """Load `folder` with AutoModel + AutoProcessor (trust_remote_code) in a fresh process and generate.

    Returns what loaded; raises `FolderDoesNotLoad` with the child's error otherwise.
    """
    with tempfile.TemporaryDirectory() as modules_cache:
        env = {**os.environ, "HF_MODULES_CACHE": modules_cache, "HF_HUB_OFFLINE": "1"}
        completed = subprocess.run(
            [sys.executable, "-c", _CHECK_SCRIPT, str(folder)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=modules_cache,
        )
    if completed.returncode != 0:
        raise FolderDoesNotLoad(f"{folder} does not load as a Hub repo:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if not report["model_module"].startswith("transformers_modules."):
        raise FolderDoesNotLoad(f"{folder}: the model did not come from the folder's own code ({report})")
    return report
