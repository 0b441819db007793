"""The README's quick start, run as a newcomer runs it: its code block as written, on a saved folder."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

from tiny_parts import random_clip, random_image

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_code() -> str:
    section = README.read_text().split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_quick_start_streams_the_answer_without_special_tokens(model, session_processor, tmp_path):
    """Found: the quick start's TextStreamer printed `</s>`. Here the language model's last norm is zeroed, so every
    logit ties and greedy decoding picks token 0, `<unk>`, a special token the stream must not show."""
    folder = tmp_path / "model"
    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.model.language_model.norm.weight.zero_()
    silent.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    random_image(1).save(tmp_path / "cat.png")
    random_image(2).convert("RGB").save(tmp_path / "dog.jpg")
    soundfile.write(tmp_path / "bark.flac", (random_clip(3) * 0.5).astype(np.float32), 16000)
    code = quick_start_code()
    assert 'repo = "mesolitica/malaysian-tinyllama-1.1b-mmmmodal"' in code
    code = re.sub(r'repo = "[^"]+"', f"repo = {str(folder)!r}", code, count=1)
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert session_processor.tokenizer.convert_ids_to_tokens(0) == "<unk>"
    assert "<unk>" not in completed.stdout and "</s>" not in completed.stdout, completed.stdout[-500:]
