"""A Hugging Face Space serving the MMMModal web chat for one model (written by `mmmmodal push --space`)."""

import os

from mmmmodal_hf.chat import load
from mmmmodal_hf.web import build_app

MODEL_ID = os.environ.get("MMMMODAL_MODEL", "{model_id}")

model, processor = load(MODEL_ID)
build_app(model, processor, title=f"MMMModal chat: {{MODEL_ID}}").queue().launch()
