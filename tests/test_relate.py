"""`mmmmodal data relate` against an OpenAI-compatible server on loopback and against local transformers models."""

import json
import re
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_datatools import write_media
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mmmmodal_hf.datatools.relate import PROMPTS, LocalLLM, MalformedReply, load_items, parse_conversation, relate
from mmmmodal_hf.datatools.validate import validate_dataset

from json_double import JsonHandler

CAPTIONS = {
    "media/red.png": "a red square on white",
    "media/blue.png": "a blue circle on grey",
    "media/tone.wav": "a steady high tone",
    "media/beep.wav": "three short beeps",
}
REPLY = "User: How do the two items relate?\nAssistant: Both are simple shapes or sounds."


def write_items(folder: Path) -> Path:
    kinds = write_media(folder)
    items = folder / "items.jsonl"
    items.write_text("".join(json.dumps({"kind": kinds[p], "path": p, "text": t}) + "\n" for p, t in CAPTIONS.items()))
    return items


class ChatCompletions(JsonHandler):
    """Speaks POST /v1/chat/completions. Every fourth relate prompt gets a reply that is not a conversation;
    translation prompts get each line back with its label kept and the text marked as Malay."""

    requests: list = []

    def do_POST(self):
        body = self.read_json()
        type(self).requests.append({"path": self.path, **body})
        prompt = body["messages"][0]["content"]
        if prompt.startswith("Translate"):
            lines = [line for line in prompt.splitlines() if line.startswith(("User:", "Assistant:"))]
            content = "\n".join(
                label + ": (ms) " + text.strip() for label, text in (line.split(":", 1) for line in lines)
            )
        elif sum(not r["messages"][0]["content"].startswith("Translate") for r in type(self).requests) % 4 == 0:
            content = "Sure! Here is a conversation about them."
        else:
            content = REPLY
        self.send_json({"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def endpoint():
    ChatCompletions.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_parse_conversation():
    assert parse_conversation("User: a?\nmore of it\n**Assistant:** b.") == [
        {"role": "user", "content": "a?\nmore of it"},
        {"role": "assistant", "content": "b."},
    ]
    for bad in (
        "Sure!\nUser: a\nAssistant: b",
        "User: a",
        "Assistant: b\nUser: a",
        "User: a\nUser: b\nAssistant: c",
        "",
    ):
        with pytest.raises(MalformedReply):
            parse_conversation(bad)


def test_relate_through_an_openai_compatible_endpoint(tmp_path, endpoint, session_processor):
    from mmmmodal_hf.cli import main as cli

    items = write_items(tmp_path)
    out = tmp_path / "out" / "relations.jsonl"
    code = cli(["data", "relate", str(items), "--endpoint", endpoint, "--model", "qwen-test", "--pairs", "9",
                "--translate", "--output", str(out), "--seed", "3"])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    relate_requests = [r for r in ChatCompletions.requests if not r["messages"][0]["content"].startswith("Translate")]
    assert len(relate_requests) == 9 and {r["model"] for r in relate_requests} == {"qwen-test"}
    assert all(r["path"] == "/v1/chat/completions" for r in ChatCompletions.requests)
    assert [r["seed"] for r in relate_requests] == list(range(3, 12))
    # Replies 4 and 8 of 9 were malformed and dropped; 7 kept, each with its Malay translation.
    assert [r["language"] for r in rows] == ["en", "ms"] * 7
    english, malay = rows[0], rows[1]
    assert english["conversations"][1]["content"] == "Both are simple shapes or sounds."
    assert malay["conversations"][1]["content"] == "(ms) Both are simple shapes or sounds."
    # Every file is referenced relative to the output and keeps its tag's kind (decoded by validate).
    report = validate_dataset(out, session_processor, block_size=4096)
    assert report.ok and report.rows == 14
    pair_kinds = {tuple(sorted(Path(f).suffix for f in r["filename"])) for r in rows}
    assert pair_kinds == {(".png", ".png"), (".wav", ".wav"), (".png", ".wav")}
    for row in rows:
        first_turn = row["conversations"][0]["content"]
        tags = ["image" if f.endswith(".png") else "audio" for f in row["filename"]]
        assert first_turn.startswith(f"<{tags[0]}> </{tags[0]}>\n<{tags[1]}> </{tags[1]}>\n")
    # The prompt carried both captions.
    assert any(CAPTIONS["media/red.png"] in r["messages"][0]["content"] for r in relate_requests)


def test_videos_pair_where_asked_and_bad_requests_are_one_line(tmp_path, endpoint, session_processor, capsys):
    """Video items pair when `--pair-types` names video pairs (the defaults are the paper's three); what relate cannot
    use is refused before the LLM is asked, or names the endpoint, in one line."""
    pytest.importorskip("av")
    import socket

    from mmmmodal_hf.cli import main as cli

    from video_files import write_video

    items = write_items(tmp_path)
    for name, caption in (("shapes.mp4", "a square turning from red to green"), ("beeps.mp4", "a beep at 1.5 s")):
        write_video(tmp_path / "media" / name)
        with items.open("a") as handle:
            handle.write(json.dumps({"kind": "video", "path": f"media/{name}", "text": caption}) + "\n")
    out = tmp_path / "videos.jsonl"
    args = ["data", "relate", str(items), "--endpoint", endpoint, "--output", str(out)]
    assert cli([*args, "--pairs", "6", "--pair-types", "video-video,image-video,audio-video"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {tuple(Path(f).suffix for f in row["filename"]) for row in rows} >= {(".mp4", ".mp4"), (".png", ".mp4")}
    for row in rows:
        tags = re.findall(r"<(image|audio|video)>", row["conversations"][0]["content"])
        assert tags == [{".png": "image", ".wav": "audio", ".mp4": "video"}[Path(f).suffix] for f in row["filename"]]
    assert validate_dataset(out, session_processor, block_size=100_000).ok  # each video decoded
    relate(load_items(items), lambda prompt, seed: REPLY, tmp_path / "default.jsonl", 6)  # the paper's three
    assert ".mp4" not in (tmp_path / "default.jsonl").read_text()

    (tmp_path / "bad.txt").write_text("Relate {first_kind} to {thing}.")
    (tmp_path / "one_video.jsonl").write_text(
        json.dumps({"kind": "video", "path": "media/shapes.mp4", "text": "x"}) + "\n"
    )
    (tmp_path / "film.jsonl").write_text(json.dumps({"kind": "film", "path": "media/shapes.mp4", "text": "x"}) + "\n")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    refused = {
        "--pair-types image-vidoe": "--pair-types are image-image, audio-audio, image-audio, video-video, "
        "image-video, audio-video; got image-vidoe",
        f"--prompt-template {tmp_path / 'bad.txt'}": "--prompt-template: KeyError 'thing' while filling it; it may "
        "name {first_kind}, {first_text}, {second_kind}, {second_text} (write literal braces as {{ }})",
        f"--endpoint {nowhere}": f"{nowhere}/chat/completions: [Errno 111] Connection refused",
        f"--items {tmp_path / 'one_video.jsonl'} --pair-types video-video": "pair type video-video needs two items: "
        "video and video",
        f"--items {tmp_path / 'film.jsonl'}": "film.jsonl:1: items need 'kind' (image|audio|video), 'path' and 'text'",
    }
    capsys.readouterr()
    for flags, said in refused.items():
        flags = flags.split(" ")
        given = [flags.pop(1), flags.pop(0)][0] if flags[0] == "--items" else str(items)
        code = cli(["data", "relate", given, "--endpoint", endpoint, "--output", str(tmp_path / "x.jsonl"), *flags])
        error = capsys.readouterr().err.strip()
        assert code == 1 and error.splitlines()[-1].endswith(said) and "Traceback" not in error, (flags, error)
    assert not (tmp_path / "x.jsonl").exists()

    def stops_after_three(prompt, seed):  # an LLM that stops answering: the rows so far are kept, marked partial
        if seed >= 3:
            raise ConnectionError("the endpoint went away")
        return REPLY

    with pytest.raises(ConnectionError):
        relate(load_items(items), stops_after_three, tmp_path / "stopped.jsonl", 6)
    assert not (tmp_path / "stopped.jsonl").exists()
    assert len((tmp_path / "stopped.jsonl.partial").read_text().splitlines()) == 3


def tiny_local_llm(folder: Path, tokenizer_folder: Path, train_on_reply: bool) -> Path:
    """A tiny Llama with the Mistral tokenizer; trained for a few steps to answer REPLY, or left random."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )  # fmt: skip
    if train_on_reply:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        target = tokenizer(REPLY, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        template = (PROMPTS / "relate.txt").read_text()
        captions = list(CAPTIONS.values())
        prompts = [
            template.format(first_kind=a, first_text=captions[i], second_kind=b, second_text=captions[j])
            for i in range(4) for j in range(4) if i != j for a, b in (("image", "audio"), ("audio", "image"))
        ]  # fmt: skip
        for step in range(120):
            prompt = tokenizer(prompts[step % len(prompts)])["input_ids"]  # as LocalLLM prompts a template-less model
            ids = torch.tensor([prompt + target])
            labels = torch.tensor([[-100] * len(prompt) + target])
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_relate_with_local_transformers_models(tmp_path, tokenizer_folder):
    items = load_items(write_items(tmp_path))
    trained = LocalLLM(str(tiny_local_llm(tmp_path / "trained", tokenizer_folder, True)), max_new_tokens=40)
    result = relate(items, trained, tmp_path / "local.jsonl", pairs=3, seed=0)
    assert result["asked"] == 3 and result.get("malformed", 0) == 0
    rows = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["conversations"][-1]["role"] == "assistant" for r in rows)
    assert {"conversations", "filename", "language"} == set(rows[0])

    untrained = LocalLLM(str(tiny_local_llm(tmp_path / "random", tokenizer_folder, False)), max_new_tokens=20)
    result = relate(items, untrained, tmp_path / "none.jsonl", pairs=3, seed=0)
    assert result["malformed"] == 3 and (tmp_path / "none.jsonl").read_text() == ""
