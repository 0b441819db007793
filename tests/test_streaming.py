"""`generate` streams tokens as they come, through transformers' own streamers."""

import threading

import torch
from transformers import TextIteratorStreamer

from tiny_parts import random_clip, random_image


def test_streamed_text_equals_the_decoded_generation(model, session_processor):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_image(0)},
                {"type": "audio", "audio": random_clip(1)},
                {"type": "text", "text": "Cerita sikit."},
            ],
        }
    ]
    inputs = session_processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # A timeout: were generate to raise in its thread, the streamer would otherwise wait for ever.
    streamer = TextIteratorStreamer(
        session_processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120
    )
    result = {}

    def run():
        with torch.no_grad():
            result["ids"] = model.generate(
                **inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False, streamer=streamer
            )

    thread = threading.Thread(target=run)
    thread.start()
    pieces = list(streamer)
    thread.join(timeout=120)
    new_ids = result["ids"][0, inputs["input_ids"].shape[1] :]
    assert len(pieces) >= 2, "tokens should arrive in several pieces"
    assert "".join(pieces) == session_processor.decode(new_ids, skip_special_tokens=True)
