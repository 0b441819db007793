"""`mmmmodal web MODEL`: a Gradio page for multi-image, multi-audio, multi-turn chat, videos too.

Each turn takes text plus any number of images, audio files and videos (upload, paste, microphone);
the media show inline in the history, the answer streams token by token, and the whole
conversation stays in the prompt through an `MMMModalChatSession` (earlier media are never
encoded again). Undo, retry and clear, generation settings, and English/Malay examples whose
media ship with the package (web_examples/). A bad file gives a readable message and the session goes on.
Gradio is an optional extra (`pip install "mmmmodal-hf[web]"`); only this module imports it.
"""

import argparse
import sys
from pathlib import Path

from .cli_help import add_video_reading_options, command_parser, port_number, video_reading_options
from .media_mmmmodal import (
    MediaError,
    NotAnImageError,
    NotAudioError,
    NotAVideoError,
    load_audio,
    load_image,
    load_video,
)
from .session import MMMModalChatSession

INTRO = (
    "# MMMModal chat\n"
    "Ask about several images, audio clips and videos over several turns, in English or Malay. "
    "Attach files with the clip button (or paste, or record), then send."
)


def media_kind(path: str, name: str | None = None) -> str:
    """image, audio or video, decided by decoding the file (never by its name).

    A file that is one kind but broken (a truncated PNG, a cut-off WAV) is reported with that kind's
    own error, named as `name` (the file as it was uploaded), never by the server's temporary path.
    """
    name = name or Path(path).name
    try:
        load_image(path)
        return "image"
    except NotAnImageError:
        pass
    except MediaError as error:
        raise type(error)(f"{name}: {error}") from None
    try:
        load_audio(path, None)  # decoded at its own rate: only whether it is audio matters here
        return "audio"
    except NotAudioError:
        pass
    except MediaError as error:
        raise type(error)(f"{name}: {error}") from None
    try:
        load_video(path, num_frames=1, load_audio_from_video=False)  # its first frame: whether it is a video
        return "video"
    except (NotAVideoError, ImportError):  # not a video, or PyAV (the [video] extra) is not installed
        pass
    except MediaError as error:
        raise type(error)(f"{name}: {error}") from None
    raise MediaError(f"{name} is neither an image, audio nor a video this page can read (Pillow, libsndfile, FFmpeg)")


EXAMPLES = Path(__file__).with_name("web_examples")  # drawn once by the package's demo world; shipped as files


def example_media() -> dict[str, str]:
    """The page's example images and clips (two shapes, two beeping clips): name -> path."""
    return {path.stem: str(path) for path in sorted(EXAMPLES.iterdir()) if path.suffix in (".png", ".wav")}


def example_turns() -> list[tuple[str, list[str]]]:
    """The page's examples, English and Malay: questions as the demo's world asks them, about the shipped media,
    so the demo's model answers them right (tests/test_demo.py asks them of the quick run's model)."""
    media = example_media()
    return [
        ("What colour is the shape in image 2?", [media["red_circle"], media["blue_square"]]),
        ("Berapa banyak bip dalam audio 1?", [media["high_beeps"]]),
        ("Which is higher, audio 1 or audio 2?", [media["high_beeps"], media["low_beep"]]),
        ("Apakah bentuk dalam gambar 1?", [media["blue_square"]]),
    ]


def _generation_settings(max_new_tokens, temperature, top_p) -> dict:
    settings = {"max_new_tokens": int(max_new_tokens)}
    if temperature and temperature > 0:
        settings.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
    else:
        settings["do_sample"] = False
    return settings


def _file_path(item) -> str:
    return item if isinstance(item, str) else (item.get("path") or item["file"]["path"])


def _message_parts(message) -> tuple[str, list[str]]:
    """The text and file paths of a MultimodalTextbox value."""
    message = message or {}
    return message.get("text", "").strip(), [_file_path(f) for f in message.get("files", [])]


def _sorted_media(files: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The files by kind (`images`, `audio`, `videos`: the session's keywords) from decoding them, and what is wrong
    with the others."""
    media, problems = {"images": [], "audio": [], "videos": []}, []
    for path in files:
        try:
            media[{"image": "images", "audio": "audio", "video": "videos"}[media_kind(path)]].append(path)
        except ValueError as error:
            problems.append(str(error))
    return media, problems


def _last_user_turn(history: list) -> tuple[int, dict]:
    """Index of the last user message group's first message, and its text and files."""
    index = len(history)
    while index > 0 and history[index - 1]["role"] != "user":
        index -= 1
    start = index
    while start > 0 and history[start - 1]["role"] == "user":
        start -= 1
    text, files = "", []
    for message in history[start:index]:
        for part in message["content"] if isinstance(message["content"], list) else [message["content"]]:
            if isinstance(part, str):
                text = part
            elif isinstance(part, dict) and part.get("type") == "text":
                text = part["text"]
            elif isinstance(part, dict):
                files.append(_file_path(part.get("file", part)))
    return start, {"text": text, "files": files}


def build_app(model, processor, title: str = "MMMModal chat", max_new_tokens: int = 256, video_options=None):
    """The Gradio Blocks app for `model` and `processor` (both already loaded); `video_options` are the processor's
    (`num_frames` or `fps`, `pool_frames`), for every video uploaded."""
    import gradio as gr

    def new_session() -> MMMModalChatSession:
        return MMMModalChatSession(model, processor, video_options=video_options)

    def respond(message, history, session, max_new_tokens, temperature, top_p):
        session = session or new_session()
        history = list(history or [])
        text, files = _message_parts(message)
        if not text and not files:
            yield gr.update(), history, session, ""
            return
        media, problems = _sorted_media(files)
        if problems:  # the message goes back to the box without the bad files; nothing else changes
            kept = [path for path in files if any(path in paths for paths in media.values())]
            yield {"text": text, "files": kept}, history, session, "**Could not use a file:** " + "; ".join(problems)
            return
        turn = [{"role": "user", "content": [{"path": path}]} for path in files]
        turn.append({"role": "user", "content": text or "(no text)"})
        shown = history + turn + [{"role": "assistant", "content": ""}]
        yield None, shown, session, ""
        streamed = ""
        try:
            for piece in session.stream(text, **media, **_generation_settings(max_new_tokens, temperature, top_p)):
                streamed += piece
                shown[-1] = {"role": "assistant", "content": streamed}
                yield None, shown, session, ""
        except Exception as error:  # shown on the page; the session is unchanged by a failed turn
            yield message, history, session, f"**Could not answer:** {error}"
            return
        shown[-1] = {"role": "assistant", "content": session.messages[-1]["content"]}
        yield None, shown, session, ""

    def api_chat(message, session, max_new_tokens, temperature, top_p):
        """One turn for API clients (gradio_client): the reply text; the conversation lives in the client's session."""
        session = session or new_session()
        text, files = _message_parts(message)
        media, problems = _sorted_media(files)
        if problems:  # refused cleanly, as the page refuses it: the client is told, the server log keeps no traceback
            raise gr.Error("; ".join(problems), print_exception=False)
        try:
            answer = session.send(text, **media, **_generation_settings(max_new_tokens, temperature, top_p))
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return answer, session

    def undo(history, session):
        history = list(history or [])
        if session is not None and session.messages and session.messages[-1]["role"] == "assistant":
            session.undo()
        start, last = _last_user_turn(history)
        return history[:start], session, last, ""

    def retry(history, session, max_new_tokens, temperature, top_p):
        history, session, last, _ = undo(history, session)
        yield from respond(last, history, session, max_new_tokens, temperature, top_p)

    def clear(session):
        if session is not None:
            session.reset()
        return session, ""

    examples = [{"text": text, "files": files} for text, files in example_turns()]
    notice = getattr(model.config, "chat_notice", None)  # what the model's folder says of it (the demo's does)

    with gr.Blocks(title=title) as app:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(f"*{notice}*", elem_id="notice")
        chatbot = gr.Chatbot(label="Conversation", height=480, elem_id="conversation")
        status = gr.Markdown(elem_id="status")
        box = gr.MultimodalTextbox(
            file_types=["image", "audio", "video"],
            file_count="multiple",
            sources=["upload", "microphone"],
            placeholder="Ask about your images, audio and videos (English or Malay)...",
            show_label=False,
            elem_id="message",
        )
        with gr.Accordion("Generation settings", open=False):
            max_new_tokens_slider = gr.Slider(1, 1024, value=max_new_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
        session = gr.State(None)
        settings = [max_new_tokens_slider, temperature, top_p]
        gr.Examples(examples=[[example] for example in examples], inputs=[box], label="Examples (English / Malay)")
        box.submit(respond, [box, chatbot, session, *settings], [box, chatbot, session, status], api_name=False)
        # For API clients: the same turn without the page's history, `client.predict(message, ..., api_name="/chat")`.
        reply = gr.Textbox(visible=False)
        gr.Button(visible=False).click(api_chat, [box, session, *settings], [reply, session], api_name="chat")
        chatbot.undo(undo, [chatbot, session], [chatbot, session, box, status], api_name=False)
        chatbot.retry(retry, [chatbot, session, *settings], [box, chatbot, session, status], api_name=False)
        chatbot.clear(clear, [session], [session, status], api_name=False)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal web", __doc__)
    parser.add_argument("model", help="folder or Hub id of an MMMModal model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 serves your network")
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on")
    parser.add_argument(
        "--share",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a temporary public gradio.live link",
    )
    add_video_reading_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('mmmmodal web needs Gradio: pip install "mmmmodal-hf[web]"', file=sys.stderr)
        return 1
    from .chat import load
    from .cli_errors import InputError, port_problem

    try:
        if problem := port_problem(args.host, args.port):  # said before the model loads, in this command's words
            raise InputError(problem)
        model, processor = load(args.model)
    except InputError as error:
        print(f"mmmmodal web: {error}", file=sys.stderr)
        return 1
    app = build_app(model, processor, title=f"MMMModal chat: {args.model}", video_options=video_reading_options(args))
    # Gradio's own banner names `share=True` in `launch()`; this command's users have the flag instead.
    app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True)
    print(f"MMMModal chat on {app.local_url}", flush=True)
    if args.share:
        print(f"public link: {app.share_url}", flush=True)
    else:
        print("pass --share for a temporary public link, or --host 0.0.0.0 to serve your network", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
