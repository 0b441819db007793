"""`mmmmodal chat MODEL`: a multi-turn chat in the terminal with images, audio and videos, streamed as generated.

    mmmmodal chat ./mmmmodal-demo/model
    you> /image cat.png
    you> /audio meow.wav
    you> What do you see and hear?
    model> ...

Commands: `/image PATH`, `/audio PATH` and `/video PATH` attach media to the next turn, `/undo` drops the last
exchange, `/reset` starts over, `/save FILE` writes the conversation as a training row
(`{"messages": [...]}`), `/quit` ends. The KV cache is kept across turns (`MMMModalChatSession`).
One-shot: `mmmmodal chat MODEL --image a.png --audio b.wav --video c.mp4 -p "question"`.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from transformers import AutoModel, AutoProcessor

from .cli_errors import loading
from .cli_help import add_video_reading_options, command_parser, positive, video_reading_options, within
from .media_mmmmodal import load_audio, load_image, load_video
from .session import MMMModalChatSession

HELP = "commands: /image PATH, /audio PATH, /video PATH, /undo, /reset, /save FILE, /quit"
KINDS = ("image", "audio", "video")


def _check(kind: str, path: str, max_pixels) -> None:
    """Whether a file reads as `kind` (a `ValueError` saying why not): audio at its own rate, a video's first frame."""
    if kind == "image":
        load_image(path, max_pixels=max_pixels)
    elif kind == "audio":
        load_audio(path, None)
    else:
        load_video(path, num_frames=1, load_audio_from_video=False, max_pixels=max_pixels)


class TerminalChat:
    """`mmmmodal chat`'s state: media attached for the next turn, and the `MMMModalChatSession` that keeps the
    KV cache, so each turn encodes only its own media and prefills only its own tokens."""

    def __init__(self, model, processor, system: str | None = None, video_options=None, **generate_kwargs):
        self.session = MMMModalChatSession(model, processor, system, video_options=video_options, **generate_kwargs)
        self.pending: list[tuple[str, str]] = []

    @property
    def messages(self) -> list[dict]:
        return self.session.messages

    def reset(self) -> None:
        self.session.reset()
        self.pending = []

    def undo(self) -> None:
        self.session.undo()

    def attach(self, kind: str, path: str) -> None:
        """Attach a file to the next turn, once it reads as that kind; a bad one is refused and nothing else changes."""
        number = sum(k == kind for k, _ in self.pending) + 1 + self._sent(kind)
        where = f"{kind} {number} ({path})"
        if not Path(path).is_file():
            raise ValueError(f"{where}: no such file")
        try:
            _check(kind, path, self.session.processor.max_image_pixels)
        except ValueError as error:
            raise type(error)(f"{where}: {error}; not attached") from error
        self.pending.append((kind, str(Path(path).resolve())))

    def _sent(self, kind: str) -> int:
        """Media of `kind` the conversation already holds: the next one is numbered after them, as the chat counts."""
        blocks = [b for m in self.messages if isinstance(m["content"], list) for b in m["content"]]
        return sum(block.get("type") == kind for block in blocks)

    def send(self, text: str, on_text=None) -> str:
        """Answer one user turn with the attached media, streaming pieces to `on_text`.

        The attachments go with this turn whatever happens: if it fails, they are dropped with it
        (the error says why) and the conversation goes on as it was.
        """
        images, clips, videos = ([path for kind, path in self.pending if kind == wanted] for wanted in KINDS)
        self.pending = []
        return self.session.send(text, images=images, audio=clips, videos=videos, on_text=on_text)

    def save(self, path: str) -> Path:
        """The conversation as a training row in the content-block format (`mmmmodal train` reads it)."""
        if not self.messages:
            raise ValueError("There is no conversation to save yet.")
        path = Path(path)
        try:
            path.write_text(json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2))
        except OSError as error:  # a missing folder, a folder given as the file: said, and the chat goes on
            raise ValueError(f"could not save to {path}: {error.strerror}") from None
        return path


def load(model_name: str):
    """Model and processor; one that does not load raises an InputError saying from where and why."""
    with loading(model_name):
        model = AutoModel.from_pretrained(model_name, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(model_name, trust_remote_code=True)
    return model, processor


def interactive(chat: TerminalChat, lines, write) -> None:
    write(f"{HELP}\n")
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                chat.reset()
                write("(conversation cleared)\n")
            elif line == "/undo":
                chat.undo()
                write("(last exchange removed)\n")
            elif line.split()[0] in ("/image", "/audio", "/video"):
                kind, _, path = line[1:].partition(" ")
                if not path.strip():
                    write(f"/{kind} needs a file: /{kind} PATH\n")
                    continue
                chat.attach(kind, path.strip())
                write(f"({kind} attached to the next turn: {path.strip()})\n")
            elif line.split()[0] == "/save":
                if len(line.split()) == 1:
                    write("/save needs a file: /save FILE\n")
                    continue
                write(f"(saved {chat.save(line.split(' ', 1)[1].strip())})\n")
            elif line.startswith("/"):
                write(f"unknown command; {HELP}\n")
            else:
                dropped = len(chat.pending)
                write("model> ")
                try:
                    chat.send(line, on_text=write)
                except ValueError as error:  # refused (too long for the context, a medium that would not read)
                    write(f"\nerror: {error}\n")
                    if dropped:
                        write("(the turn's attachments were dropped with it)\n")
                    continue
                write("\n")
        except ValueError as error:
            write(f"error: {error}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal chat", __doc__)
    parser.add_argument("model", help="folder or Hub id of an MMMModal model")
    parser.add_argument("-p", "--prompt", help="ask one question and exit (None: an interactive chat)")
    parser.add_argument("--image", action="append", default=[], help="image for the first turn; repeatable")
    parser.add_argument("--audio", action="append", default=[], help="audio for the first turn; repeatable")
    parser.add_argument("--video", action="append", default=[], help="video for the first turn; repeatable")
    add_video_reading_options(parser)
    parser.add_argument("--system", help="a system message put before the first turn")
    parser.add_argument("--max-new-tokens", type=positive(int), default=256, help="longest reply, in tokens")
    parser.add_argument("--min-new-tokens", type=within(int, lambda n: n >= 0, "0 or more"), default=None,
                        help="shortest reply, in tokens")  # fmt: skip
    parser.add_argument("--temperature", type=within(float, lambda t: 0 <= t < math.inf, "0 or more"), default=0.0,
                        help="sampling temperature; 0 is greedy")  # fmt: skip
    parser.add_argument("--top-p", type=within(float, lambda p: 0 < p <= 1, "above 0 and at most 1"), default=1.0,
                        help="nucleus sampling with --temperature")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is not None and not args.prompt.strip():
        print("mmmmodal chat: the prompt (-p) is empty; write a question", file=sys.stderr)
        return 2
    if (problem := _unusable_attachment(args)) is not None:  # before the model loads: a bad file costs no minute
        print(f"mmmmodal chat: {problem}", file=sys.stderr)
        return 2
    generate_kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.min_new_tokens:
        generate_kwargs["min_new_tokens"] = args.min_new_tokens
    if args.temperature > 0:
        generate_kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        video_options = video_reading_options(args)
        chat = TerminalChat(*load(args.model), system=args.system, video_options=video_options, **generate_kwargs)
        notice = getattr(chat.session.model.config, "chat_notice", None)  # what the model's folder says of it
        for kind in KINDS:
            for path in getattr(args, kind):
                chat.attach(kind, path)
                if args.prompt is None:
                    write(f"({kind} attached to the first turn: {path})\n")
        if args.prompt is not None:
            if notice:
                print(notice, file=sys.stderr)
            chat.send(args.prompt, on_text=write)
            write("\n")
            return 0
        lines = _prompted_lines(write) if sys.stdin.isatty() else sys.stdin
        if notice:
            write(f"{notice}\n")
        interactive(chat, lines, write)
    except ValueError as error:  # an InputError from `load`, or bad media or a too-long turn
        print(f"mmmmodal chat: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmmmmodal chat: interrupted", file=sys.stderr)
        return 130
    return 0


def _unusable_attachment(args) -> str | None:
    """What is wrong with the first `--image` / `--audio` / `--video` file that is missing or not that medium."""
    for kind in KINDS:
        for number, path in enumerate(getattr(args, kind), start=1):
            if not Path(path).is_file():
                return f"{kind} {number} ({path}): no such file"
            try:
                _check(kind, path, None)
            except ValueError as error:
                return f"{kind} {number} ({path}): {error}"
    return None


def _prompted_lines(write):
    while True:
        write("you> ")
        try:
            yield input()
        except EOFError:
            write("\n")
            return
