"""Turn-k time to first token: `MMMModalChatSession` (KV cache kept) against re-running the conversation.

A 4-turn chat adds 2 images, then 1 clip, then 2 images, then 1 clip. For each turn k it times,
interleaved, (a) the session's turn (prefill of the new turn + 1 token), (b) re-running the whole
conversation so far from scratch (processor + generate, 1 token: what `generate` alone does), and
(c) the new turn's prompt and media alone in a fresh forward (the floor). Goal: (a) <= 1.10 x (c).

    python bench/chat_session.py [--repeats 3] [--quick]
"""

import argparse

import torch
from common import clip, image, interleaved_medians, parse_arguments, report, small_model, small_processor

from mmmmodal_hf import MMMModalChatSession

TURNS = [
    ("What is in these two pictures?", [image(1), image(2)], []),
    ("And what do you hear?", [], [clip(3)]),
    ("Two more pictures: which is brighter?", [image(4), image(5)], []),
    ("Does this sound match the first picture?", [], [clip(6)]),
]


ONE_TOKEN = {"max_new_tokens": 1, "do_sample": False}


def session_before(model, processor, k: int) -> MMMModalChatSession:
    """A session holding turns 1..k, so every timed turn starts from the same state."""
    session = MMMModalChatSession(model, processor, max_new_tokens=8, do_sample=False)
    for text, images, clips in TURNS[:k]:
        session.send(text, images=images, audio=clips)
    return session


def measure_turn(model, processor, k: int, repeats: int) -> dict:
    text, images, clips = TURNS[k]
    prepared = session_before(model, processor, k)
    history, cached = list(prepared.messages), prepared.cached_tokens
    turn = {
        "role": "user",
        "content": [*({"type": "image", "image": i} for i in images), *({"type": "audio", "audio": c} for c in clips)]
        + [{"type": "text", "text": text}],
    }

    def with_session():
        prepared.send(text, images=images, audio=clips, **ONE_TOKEN)
        prepared.undo()  # back to the same state for the next repeat

    def from_scratch():
        inputs = processor.apply_chat_template(
            [*history, turn], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(model.device)
        with torch.no_grad():
            model.generate(**inputs, **ONE_TOKEN)

    alone_inputs = processor.apply_chat_template(
        [turn], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)

    def new_turn_alone():
        with torch.no_grad():
            model.generate(**alone_inputs, **ONE_TOKEN)

    times = interleaved_medians(
        {"session": with_session, "from_scratch": from_scratch, "new_turn_alone": new_turn_alone}, repeats=repeats
    )
    prepared.send(text, images=images, audio=clips, **ONE_TOKEN)
    return {
        "turn": k + 1,
        "cached_positions": cached,
        "session_prefill_positions": prepared.last_prefill_tokens,
        "from_scratch_positions": cached + prepared.last_prefill_tokens,
        "session_s": times["session"],
        "from_scratch_s": times["from_scratch"],
        "new_turn_alone_s": times["new_turn_alone"],
        "session_vs_alone": times["session"] / times["new_turn_alone"],
        "scratch_vs_session": times["from_scratch"] / times["session"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_arguments(parser)
    processor = small_processor()
    model = small_model(processor)
    rows = [measure_turn(model, processor, k, args.repeats) for k in range(len(TURNS))]
    report("chat session: turn-k time to first token", rows, {"goal": "session_vs_alone <= 1.10"})


if __name__ == "__main__":
    main()
