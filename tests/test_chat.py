"""`mmmmodal chat`: an interactive session driven through stdin, and the one-shot form."""

import json
import subprocess
import sys

import pytest
import soundfile

from console import run_cases
from tiny_parts import random_clip, random_image


def chat(saved_folder, *args, stdin=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "chat",
            str(saved_folder),
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


def test_two_turns_with_image_and_audio_commands(saved_folder, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    soundfile.write(tmp_path / "b.wav", random_clip(1), 16000)
    script = (
        "\n".join(
            [
                f"/save {tmp_path / 'early.json'}",
                f"/image {tmp_path / 'a.png'}",
                f"/audio {tmp_path / 'b.wav'}",
                "Apa yang ada dalam gambar dan audio ini?",
                f"/save {tmp_path / 'no_such_folder' / 'conversation.json'}",
                "And the colour?",
                f"/image {tmp_path / 'missing.png'}",
                "/image",
                "/audio   ",
                f"/save {tmp_path / 'conversation.json'}",
                "/quit",
            ]
        )
        + "\n"
    )
    completed = chat(saved_folder, stdin=script)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "(image attached to the next turn" in out and "(audio attached to the next turn" in out
    answers = [line[len("model> ") :] for line in out.splitlines() if line.startswith("model> ")]
    assert len(answers) == 2 and all(answer.strip() for answer in answers)
    assert "error: image 2 (" in out and "missing.png): no such file" in out
    assert "/image needs a file: /image PATH" in out and "/audio needs a file: /audio PATH" in out
    assert "unknown command" not in out
    # Found: a /save that could not write ended the chat with the conversation in it; it is said, and the chat goes on.
    assert "error: There is no conversation to save yet." in out and not (tmp_path / "early.json").exists()
    assert f"error: could not save to {tmp_path / 'no_such_folder' / 'conversation.json'}: No such file" in out
    saved = json.loads((tmp_path / "conversation.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert [b["type"] for b in saved[0]["content"]] == ["image", "audio", "text"]
    assert saved[2]["content"] == [{"type": "text", "text": "And the colour?"}]
    assert saved[1]["content"] == answers[0].strip()
    # The saved conversation is a training row, read as training reads data (found: a traceback from `datasets`).
    from mmmmodal_hf.data import conversation_from_row, load_rows

    row = conversation_from_row(json.loads((tmp_path / "conversation.json").read_text()))
    assert len(row.images) == 1 and len(row.audio) == 1
    (read,) = load_rows(tmp_path / "conversation.json")
    assert read["_row_id"] == "conversation.json:1" and read["messages"] == saved


def test_one_shot_prompt(saved_folder, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    completed = chat(saved_folder, "--image", str(tmp_path / "a.png"), "-p", "Apa ini?")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    completed = chat(saved_folder, "--image", str(broken), "-p", "Apa ini?")
    # Refused before the model loads, as a missing file is: a bad argument (2).
    assert completed.returncode == 2 and "not a readable image" in completed.stderr


def test_a_bad_attachment_is_dropped_and_the_chat_goes_on(saved_folder, tmp_path):
    """A corrupt image or a text file named .wav is refused once, numbered as the chat counts; later turns work."""
    random_image(0).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "notes.wav").write_text("not audio at all")
    script = "\n".join(
        [
            f"/image {tmp_path / 'corrupt.png'}",
            "Apa ini?",
            f"/audio {tmp_path / 'notes.wav'}",
            f"/image {tmp_path / 'good.png'}",
            "Dan ini?",
            f"/image {tmp_path / 'good.png'}",
            "kata " * 1100,  # longer than the model's context of 1,024: refused before it runs
            "Terima kasih.",
            "/quit",
        ]
    )
    completed = chat(saved_folder, stdin=script + "\n")
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 3, completed.stdout
    assert "image 1 (" in errors[0] and "corrupt.png" in errors[0] and "not attached" in errors[0]
    assert "audio 1 (" in errors[1] and "notes.wav" in errors[1] and "not attached" in errors[1]
    # The refused turn: its error on a line of its own (not after "model> "), then what happened to its image.
    refused = lines.index(errors[2])
    assert errors[2].startswith("error: ") and "context of 1024" in errors[2], errors[2]
    assert (
        lines[refused - 1].endswith("model> ")
        and lines[refused + 1] == "(the turn's attachments were dropped with it)"
    )
    answers = [line for line in lines if line.startswith("model> ") and line[len("model> ") :].strip()]
    assert len(answers) == 3, completed.stdout


def test_media_given_without_a_prompt_go_with_the_first_turn(saved_folder, tmp_path):
    random_image(0).save(tmp_path / "a.png")
    completed = chat(
        saved_folder, "--image", str(tmp_path / "a.png"), stdin=f"Apa ini?\n/save {tmp_path / 'c.json'}\n/quit\n"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "(image attached to the first turn:" in completed.stdout
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert [block["type"] for block in saved[0]["content"]] == ["image", "text"]


@pytest.fixture(scope="module")
def refusals(saved_folder, tmp_path_factory) -> list[dict]:
    """Refused arguments, each in a folder of its own: an empty prompt, a missing file, and a file that is no image
    beside a model that is not there."""
    folders = [tmp_path_factory.mktemp("refused") for _ in range(3)]
    (folders[2] / "notes.png").write_text("not a picture")
    soundfile.write(folders[2] / "beep.wav", random_clip(1), 16000)
    cases = [
        ["chat", str(saved_folder), "-p", "  "],
        ["chat", str(saved_folder), "--image", "nowhere.png", "-p", "Apa?"],
        ["chat", "./no_model_here", "--audio", "beep.wav", "--image", "notes.png", "-p", "Apa?"],
    ]
    return run_cases(list(zip(cases, folders)))


@pytest.mark.parametrize(
    "case, message",
    [(0, "the prompt (-p) is empty"), (1, "image 1 (nowhere.png): no such file")],
)
def test_bad_arguments_end_with_one_line_and_a_nonzero_exit(refusals, case, message):
    outcome = refusals[case]
    assert outcome["status"] != 0
    assert message in outcome["stderr"] and "Traceback" not in outcome["stderr"]
    assert len(outcome["stderr"].strip().splitlines()) == 1, outcome["stderr"]


def test_ctrl_c_at_the_prompt_in_a_terminal(saved_folder):
    """Driven through a pseudo-terminal, as a person types: one answer, then Ctrl-C at the next prompt."""
    import os
    import pty
    import select
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat on the terminal's side
        # As a terminal starts it: a suite started in the background of a shell ignores SIGINT, and Python keeps
        # an ignored SIGINT ignored, so the chat would never see Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(
            sys.executable,
            [sys.executable, "-m", "mmmmodal_hf.cli", "chat", str(saved_folder), "--max-new-tokens", "3"],
        )
    screen = b""

    def read_until(marker: bytes, count: int, timeout: float = 180) -> None:
        nonlocal screen
        deadline = time.time() + timeout
        while screen.count(marker) < count and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)  # never block past the deadline
            if not ready:
                continue
            try:
                screen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break

    read_until(b"you> ", 1)
    os.write(fd, b"Apa khabar?\r")
    read_until(b"you> ", 2)
    assert b"model> " in screen
    # Ctrl-C, pressed again every 2 s as a person would: one that lands after input()'s last signal check
    # and before its read() sets Python's flag but leaves the read blocked (CPython's race, not the chat's).
    for _ in range(30):
        os.write(fd, b"\x03")
        read_until(b"interrupted", 1, timeout=2)
        if b"interrupted" in screen:
            break
    deadline = time.time() + 60  # a chat that does not end fails the test; it never hangs the suite
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.time() < deadline:
        time.sleep(0.5)
    if ended[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)
    assert ended[0] != 0, f"the chat did not end after Ctrl-C:\n{screen.decode(errors='replace')}"
    assert os.waitstatus_to_exitcode(ended[1]) == 130
    assert b"mmmmodal chat: interrupted" in screen and b"Traceback" not in screen


def test_a_bad_file_is_refused_before_the_model_loads(refusals):
    """Found: `--image` with a file that is no image loaded the model first. Here the model is not there at all:
    the answer names the file, so nothing was loaded before it."""
    outcome = refusals[2]
    assert outcome["status"] == 2 and "Traceback" not in outcome["stderr"]
    (line,) = outcome["stderr"].strip().splitlines()
    assert line.startswith("mmmmodal chat: image 1 (notes.png): not a readable image"), line
