"""`mmmmodal chat MODEL`: a multi-turn chat in the terminal with images and audio, streamed as it is generated.

    mmmmodal chat ./mmmmodal-demo/model
    you> /image cat.png
    you> /audio meow.wav
    you> What do you see and hear?
    model> ...

Commands: `/image PATH` and `/audio PATH` attach media to the next turn, `/undo` drops the last
exchange, `/reset` starts over, `/save FILE` writes the conversation as a training row
(`{"messages": [...]}`), `/quit` ends. The KV cache is kept across turns (`MMMModalChatSession`).
One-shot: `mmmmodal chat MODEL --image a.png --audio b.wav -p "question"`.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoModel, AutoProcessor

from .session import MMMModalChatSession

HELP = "commands: /image PATH, /audio PATH, /undo, /reset, /save FILE, /quit"


class ChatSession:
    """The terminal's view of a chat: media attached for the next turn, and an `MMMModalChatSession`
    that keeps the KV cache, so each turn encodes only its own media and prefills only its own tokens."""

    def __init__(self, model, processor, system: str | None = None, **generate_kwargs):
        self.chat = MMMModalChatSession(model, processor, system=system, **generate_kwargs)
        self.pending: list[tuple[str, str]] = []

    @property
    def messages(self) -> list[dict]:
        return self.chat.messages

    def reset(self) -> None:
        self.chat.reset()
        self.pending = []

    def undo(self) -> None:
        self.chat.undo()

    def attach(self, kind: str, path: str) -> None:
        if not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        self.pending.append((kind, str(Path(path).resolve())))

    def send(self, text: str, on_text=None) -> str:
        """Answer one user turn with the attached media, streaming pieces to `on_text`."""
        images = [path for kind, path in self.pending if kind == "image"]
        clips = [path for kind, path in self.pending if kind == "audio"]
        answer = self.chat.send(text, images=images, audio=clips, on_text=on_text)  # bad media raise first
        self.pending = []
        return answer

    def save(self, path: str) -> Path:
        """The conversation as a training row in the content-block format (`mmmmodal train` reads it)."""
        path = Path(path)
        path.write_text(json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2))
        return path


def load(model_name: str):
    model = AutoModel.from_pretrained(model_name, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_name, trust_remote_code=True)
    return model, processor


def interactive(session: ChatSession, lines, write) -> None:
    write(f"{HELP}\n")
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                session.reset()
                write("(conversation cleared)\n")
            elif line == "/undo":
                session.undo()
                write("(last exchange removed)\n")
            elif line.startswith(("/image ", "/audio ")):
                kind, path = line[1:].split(" ", 1)
                session.attach(kind, path.strip())
                write(f"({kind} attached to the next turn: {path.strip()})\n")
            elif line.startswith("/save "):
                write(f"(saved {session.save(line.split(' ', 1)[1].strip())})\n")
            elif line.startswith("/"):
                write(f"unknown command; {HELP}\n")
            else:
                write("model> ")
                session.send(line, on_text=write)
                write("\n")
        except ValueError as error:
            write(f"error: {error}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmmmodal chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="folder or Hub id of an MMMModal model")
    parser.add_argument("-p", "--prompt", help="ask one question and exit")
    parser.add_argument("--image", action="append", default=[], help="image for the one-shot prompt (repeatable)")
    parser.add_argument("--audio", action="append", default=[], help="audio for the one-shot prompt (repeatable)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--min-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    generate_kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.min_new_tokens:
        generate_kwargs["min_new_tokens"] = args.min_new_tokens
    if args.temperature > 0:
        generate_kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    session = ChatSession(*load(args.model), system=args.system, **generate_kwargs)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if args.prompt is not None:
        try:
            for path in args.image:
                session.attach("image", path)
            for path in args.audio:
                session.attach("audio", path)
            session.send(args.prompt, on_text=write)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        write("\n")
        return 0
    lines = _prompted_lines(write) if sys.stdin.isatty() else sys.stdin
    interactive(session, lines, write)
    return 0


def _prompted_lines(write):
    while True:
        write("you> ")
        try:
            yield input()
        except EOFError:
            write("\n")
            return
