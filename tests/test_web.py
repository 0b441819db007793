"""The Gradio page in a real headless Chromium, through gradio_client, and with a broken upload."""

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from mmmmodal_hf.web import build_app, example_media

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def web_app(model, session_processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    app = build_app(model, session_processor, max_new_tokens=10)
    app.queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, show_error=True)
    yield url, example_media(), folder
    app.close()


def wait_for_answers(page, count: int, timeout: float = 60.0) -> list[str]:
    """Texts of the assistant messages once there are `count` and the last one has stopped growing."""
    deadline, last, stable_since = time.time() + timeout, None, None
    while time.time() < deadline:
        texts = page.locator("#conversation [data-testid=bot]").all_inner_texts()
        if len(texts) >= count and texts[-1].strip():
            if texts == last and time.time() - stable_since > 1.0:
                return texts
            if texts != last:
                last, stable_since = texts, time.time()
        page.wait_for_timeout(200)
    raise AssertionError(f"no complete answer {count} within {timeout} s; saw {last}")


def send(page, text: str, files: list[str] = ()) -> None:
    if files:
        page.locator("#message input[type=file]").first.set_input_files(list(files))
        page.wait_for_function(
            'n => document.querySelectorAll(\'#message .thumbnail-item, #message [data-testid="file-preview"],'
            " #message .thumbnails > *').length >= n",
            arg=len(files),
            timeout=30000,
        )
    page.locator("#message textarea").fill(text)
    page.locator("#message textarea").press("Enter")


def test_browser_chat_with_two_images_and_a_clip_then_a_follow_up(web_app):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser test needs Debian's chromium (apt-get install chromium)"
    url, media, folder = web_app
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        send(
            page,
            "What colours are the two shapes, and how many beeps?",
            [media["red_circle"], media["blue_square"], media["high_beeps"]],
        )
        first = wait_for_answers(page, 1)[0]
        # The media show inline in the history: two images and an audio player in the user's turn.
        assert page.locator("#conversation [data-testid=user] img").count() >= 2
        assert page.locator("#conversation [data-testid=user] [data-testid^=waveform]").count() == 1
        send(page, "What colour was the first image again?")
        answers = wait_for_answers(page, 2)
        assert answers[0] == first and answers[1].strip()
        artifacts = Path(os.environ.get("MMMMODAL_TEST_ARTIFACTS", folder))
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "web_chat.png"), full_page=True)
        browser.close()
    assert (artifacts / "web_chat.png").stat().st_size > 10_000


def test_a_video_upload_shows_inline_and_is_answered(web_app):
    """A video among the uploads is its frames and soundtrack to the model, and a player in the page's history."""
    from playwright.sync_api import sync_playwright

    from video_files import write_video

    url, media, folder = web_app
    video = write_video(folder / "walk.mp4", seconds=2.0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        send(page, "What happens in the video, and what colour is the shape?", [str(video), media["red_circle"]])
        assert wait_for_answers(page, 1)[0].strip()
        assert page.locator("#conversation [data-testid=user] video").count() == 1
        assert page.locator("#conversation [data-testid=user] img").count() >= 1
        assert "Could not" not in page.locator("#status").inner_text()
        browser.close()


def test_same_conversation_through_gradio_client(web_app):
    from gradio_client import Client, handle_file

    url, media, _ = web_app
    client = Client(url, verbose=False)
    first = client.predict(
        {
            "text": "What colours are these?",
            "files": [handle_file(media["red_circle"]), handle_file(media["high_beeps"])],
        },
        10,
        0.0,
        1.0,
        api_name="/chat",
    )
    follow_up = client.predict({"text": "And the first one again?", "files": []}, 10, 0.0, 1.0, api_name="/chat")
    assert isinstance(first, str) and first.strip() and isinstance(follow_up, str) and follow_up.strip()


def test_the_pages_video_options_read_each_upload_as_the_chat_session_does(model, session_processor, tmp_path):
    """`mmmmodal web --num-frames 3 --pool-frames` (a model finetuned on pooled frames): an uploaded video is read
    so, and answered as `MMMModalChatSession` answers with the same options."""
    from gradio_client import Client, handle_file

    from mmmmodal_hf.cli_help import video_reading_options
    from mmmmodal_hf.session import MMMModalChatSession
    from mmmmodal_hf.web import build_parser

    from video_files import write_video

    options = video_reading_options(build_parser().parse_args(["model", "--num-frames", "3", "--pool-frames"]))
    assert options == {"num_frames": 3, "pool_frames": True}
    video = write_video(tmp_path / "walk.mp4", seconds=2.0)
    question = "What colour is the shape?"
    app = build_app(model, session_processor, max_new_tokens=10, video_options=options)
    app.queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True)
    try:
        answer = Client(url, verbose=False).predict(
            {"text": question, "files": [handle_file(str(video))]}, 10, 0.0, 1.0, api_name="/chat"
        )
    finally:
        app.close()
    read_so = MMMModalChatSession(model, session_processor, video_options=options, max_new_tokens=10)
    by_default = MMMModalChatSession(model, session_processor, max_new_tokens=10)
    assert answer == read_so.send(question, videos=[str(video)]) != by_default.send(question, videos=[str(video)])


def test_broken_upload_shows_an_error_and_the_next_turn_works(web_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, media, _ = web_app
    good = Path(media["blue_square"]).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[: len(good) // 3])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        send(page, "What is in this picture?", [str(broken)])
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('Could not use a file')", timeout=30000
        )
        status = page.locator("#status").inner_text()
        # Said as the user would: which file (as uploaded) and what is wrong with it, no server path.
        assert "broken.png: the image data is corrupt or truncated" in status, status
        assert "/tmp" not in status and "neither" not in status
        assert page.locator("#conversation [data-testid=bot]").count() == 0
        page.locator("#message textarea").fill("")
        send(page, "Then what is in this one?", [media["blue_square"]])
        assert wait_for_answers(page, 1)[0].strip()
        assert "Could not use" not in page.locator("#status").inner_text()
        browser.close()


def test_undo_and_retry_in_the_page(web_app):
    from playwright.sync_api import sync_playwright

    url, media, _ = web_app
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        send(page, "First question about this image.", [media["red_circle"]])
        wait_for_answers(page, 1)
        send(page, "Second question.")
        wait_for_answers(page, 2)
        page.get_by_role("button", name="Undo").last.click()  # the second exchange goes; its text returns to the box
        page.wait_for_function("document.querySelectorAll('#conversation [data-testid=bot]').length === 1")
        assert page.locator("#message textarea").input_value() == "Second question."
        page.get_by_role("button", name="Retry").last.click()  # the first exchange is asked again
        retried = wait_for_answers(page, 1)
        assert len(retried) == 1 and retried[0].strip()
        browser.close()


def test_the_core_package_does_not_import_gradio():
    import subprocess
    import sys

    code = "import sys, mmmmodal_hf, mmmmodal_hf.chat, mmmmodal_hf.cli; assert 'gradio' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode == 0


def web_command(folder):
    """`mmmmodal web FOLDER` started on a free port: the process (its output on stdout) and the port."""
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "mmmmodal_hf.cli", "web", str(folder), "--port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), port


def test_the_command_names_its_own_share_flag(saved_folder):
    """`mmmmodal web` starts, says where it serves, and points at `--share` (not Gradio's `share=True`)."""
    process, port = web_command(saved_folder)
    try:
        lines = []
        deadline = time.time() + 240
        while time.time() < deadline and not any("--share" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        out = "".join(lines)
        assert f"MMMModal chat on http://127.0.0.1:{port}" in out, out
        assert "pass --share for a temporary public link" in out and "share=True" not in out
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_refused_upload_leaves_no_traceback_in_the_server_log(saved_folder, tmp_path):
    """Found: `mmmmodal web` printed Gradio's full traceback for an upload it had refused cleanly through `/chat`."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    good = Path(example_media()["blue_square"]).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[: len(good) // 3])
    process, port = web_command(saved_folder)
    try:
        while "MMMModal chat on" not in (line := process.stdout.readline()):
            assert line, "the server ended before it served"
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(AppError, match="broken.png: the image data is corrupt or truncated"):
            client.predict({"text": "Apa ini?", "files": [handle_file(str(broken))]}, 4, 0.0, 1.0, api_name="/chat")
        answer = client.predict({"text": "Apa ini?", "files": []}, 4, 0.0, 1.0, api_name="/chat")
        assert isinstance(answer, str) and answer.strip()  # the server goes on
    finally:
        process.terminate()
        log, _ = process.communicate(timeout=60)
    assert "Traceback" not in log, log[-3000:]


def test_the_space_push_writes_serves_the_page_and_answers(saved_folder, tmp_path):
    """The Space `mmmmodal push --space` uploads, run as the Space runs it (`python app.py`, Gradio's port from the
    environment), serving a local folder through the card's `MMMMODAL_MODEL` variable: it answers through `/chat`."""
    import subprocess
    import sys

    from gradio_client import Client

    from mmmmodal_hf.conversion.push import write_space

    write_space("someone/tiny", tmp_path)
    port = free_port()
    env = {**os.environ, "MMMMODAL_MODEL": str(saved_folder), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    process = subprocess.Popen([sys.executable, "app.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        while f"127.0.0.1:{port}" not in (line := process.stdout.readline()):
            assert line, "the Space's app ended before it served"
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        answer = client.predict({"text": "Apa ini?", "files": []}, 4, 0.0, 1.0, api_name="/chat")
        assert isinstance(answer, str) and answer.strip()
    finally:
        process.terminate()
        log, _ = process.communicate(timeout=60)
    assert "Traceback" not in log, log[-3000:]
