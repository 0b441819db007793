"""`mmmmodal chat`: an interactive session driven through stdin, and the one-shot form."""

import json
import subprocess
import sys

import pytest
import soundfile

from tiny_parts import random_clip, random_image


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, model, session_processor):
    folder = tmp_path_factory.mktemp("chat_model")
    model.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    return folder


def chat(model_folder, *args, stdin=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "chat",
            str(model_folder),
            "--max-new-tokens",
            "4",
            "--min-new-tokens",
            "4",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_turns_with_image_and_audio_commands(model_folder, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    soundfile.write(tmp_path / "b.wav", random_clip(1), 16000)
    script = (
        "\n".join(
            [
                f"/image {tmp_path / 'a.png'}",
                f"/audio {tmp_path / 'b.wav'}",
                "Apa yang ada dalam gambar dan audio ini?",
                "And the colour?",
                f"/image {tmp_path / 'missing.png'}",
                f"/save {tmp_path / 'conversation.json'}",
                "/quit",
            ]
        )
        + "\n"
    )
    completed = chat(model_folder, stdin=script)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "(image attached to the next turn" in out and "(audio attached to the next turn" in out
    answers = [line[len("model> ") :] for line in out.splitlines() if line.startswith("model> ")]
    assert len(answers) == 2 and all(answer.strip() for answer in answers)
    assert "error: no such file" in out
    saved = json.loads((tmp_path / "conversation.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert [b["type"] for b in saved[0]["content"]] == ["image", "audio", "text"]
    assert saved[2]["content"] == [{"type": "text", "text": "And the colour?"}]
    assert saved[1]["content"] == answers[0].strip()
    # The saved conversation is a training row.
    from mmmmodal_hf.data import conversation_from_row

    row = conversation_from_row(json.loads((tmp_path / "conversation.json").read_text()))
    assert len(row.images) == 1 and len(row.audio) == 1


def test_one_shot_prompt(model_folder, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    completed = chat(model_folder, "--image", str(tmp_path / "a.png"), "-p", "Apa ini?")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    completed = chat(model_folder, "--image", str(broken), "-p", "Apa ini?")
    assert completed.returncode == 1 and "not a readable image" in completed.stderr
