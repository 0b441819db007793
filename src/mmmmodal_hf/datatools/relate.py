"""`mmmmodal data relate`: relationship QA conversations over pairs of media, written by an instruct LLM.

The paper's relationship data (section 3): for pairs of media (image-image, audio-audio,
image-audio) an instruct LLM reads their captions or transcripts and writes a conversation about
how they relate. Items come from a JSONL/Parquet file of `{"kind": "image"|"audio"|"video", "path": ...,
"text": caption or transcript}`; videos pair only where `--pair-types` names them (video-video, image-video,
audio-video). The LLM is either an OpenAI-compatible chat-completions endpoint
(vLLM, TGI, ...) or a local transformers causal LM. Prompt templates are plain files (the
defaults live in `datatools/prompts/`); replies must be `User: ...` / `Assistant: ...` lines,
and replies that do not parse are counted and dropped. `--translate` asks the same LLM for a
Malay version of each conversation and writes it as a further row.
"""

import argparse
import json
import logging
import re
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cli_errors import InputError
from ..cli_help import command_parser, positive
from ..processing_mmmmodal import MEDIA_PLACEHOLDERS
from .rows import check_output, write_rows

logger = logging.getLogger(__name__)

PROMPTS = Path(__file__).parent / "prompts"
PAIR_TYPES = {"image-image": ("image", "image"), "audio-audio": ("audio", "audio"), "image-audio": ("image", "audio")}
VIDEO_PAIR_TYPES = {
    "video-video": ("video", "video"),
    "image-video": ("image", "video"),
    "audio-video": ("audio", "video"),
}
KINDS = ("image", "audio", "video")
_LINE = re.compile(r"^\s*\**(User|Assistant)\**\s*:\s*\**\s*(.*)$", re.IGNORECASE)


class MalformedReply(ValueError):
    """The LLM's reply is not a User/Assistant conversation."""


def parse_conversation(reply: str) -> list[dict]:
    """`User: ...` / `Assistant: ...` lines (continuation lines join the turn above) as messages.

    Raises `MalformedReply` unless the turns alternate, start with the user and end with the assistant.
    """
    messages: list[dict] = []
    for line in reply.strip().splitlines():
        match = _LINE.match(line)
        if match:
            messages.append({"role": match.group(1).lower(), "content": match.group(2).strip()})
        elif line.strip():
            if not messages:
                raise MalformedReply(f"text before the first turn: {line.strip()[:60]!r}")
            messages[-1]["content"] = f"{messages[-1]['content']}\n{line.strip()}".strip()
    if not messages:
        raise MalformedReply("no User:/Assistant: lines")
    roles = [m["role"] for m in messages]
    expected = ["user", "assistant"] * (len(roles) // 2 + 1)
    if roles != expected[: len(roles)] or roles[-1] != "assistant":
        raise MalformedReply(f"turns are {roles}, not user/assistant pairs")
    if any(not m["content"] for m in messages):
        raise MalformedReply("an empty turn")
    return messages


def as_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class EndpointLLM:
    """An OpenAI-compatible `/chat/completions` endpoint (vLLM, TGI, llama.cpp server, ...)."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 512, timeout: float = 120
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.max_tokens, self.timeout = model, api_key, max_tokens, timeout

    def __call__(self, prompt: str, seed: int) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0.7,
            "seed": seed,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
            return payload["choices"][0]["message"]["content"]
        except OSError as error:  # no connection, an HTTP error, a timeout
            raise InputError(f"{self.url}: {getattr(error, 'reason', error)}") from None
        except (ValueError, LookupError, TypeError):
            raise InputError(f"{self.url} did not answer as an OpenAI chat-completions endpoint does") from None


class LocalLLM:
    """A local transformers causal LM, prompted through its chat template when it has one."""

    def __init__(self, model_path: str, max_new_tokens: int = 512):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompt: str, seed: int) -> str:
        import torch

        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
        else:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens, do_sample=False
            )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


def load_items(path) -> list[dict]:
    from ..data import UNREADABLE, load_rows

    items = []
    for row in load_rows(path):
        if row.get(UNREADABLE):
            logger.warning("skipping item %s: %s", row["_row_id"], row[UNREADABLE])
            continue
        if row.get("kind") not in KINDS or not row.get("path") or not row.get("text"):
            raise InputError(f"{row.get('_row_id')}: items need 'kind' (image|audio|video), 'path' and 'text'")
        path = Path(row["path"])
        items.append(
            {
                "kind": row["kind"],
                "path": str(path if path.is_absolute() else Path(row["_base_dir"]) / path),
                "text": row["text"],
            }
        )
    return items


def relate(
    items: list[dict],
    llm,
    output: str | Path,
    pairs: int,
    pair_types=tuple(PAIR_TYPES),
    template: str | None = None,
    translate: bool = False,
    translate_template: str | None = None,
    seed: int = 0,
) -> dict:
    """Ask `llm` for `pairs` relationship conversations (pair types in turn); write the parsed ones."""
    template = template or (PROMPTS / "relate.txt").read_text()
    translate_template = translate_template or (PROMPTS / "translate.txt").read_text()
    by_kind = {kind: [item for item in items if item["kind"] == kind] for kind in KINDS}
    known = {**PAIR_TYPES, **VIDEO_PAIR_TYPES}
    if unknown := [name for name in pair_types if name not in known]:
        raise InputError(f"--pair-types are {', '.join(known)}; got {', '.join(unknown)}")
    check_output(output)
    for name in pair_types:
        first, second = known[name]
        if len(by_kind[first]) < 2 if first == second else not (by_kind[first] and by_kind[second]):
            raise InputError(f"pair type {name} needs two items: {first} and {second}")
    _check_template("--prompt-template", template, ("first_kind", "first_text", "second_kind", "second_text"))
    _check_template("--translate-template", translate_template, ("conversation",))
    rng = np.random.default_rng(seed)
    counts = Counter()
    output = Path(output)

    def pick_pair(name):
        first_kind, second_kind = known[name]
        first = by_kind[first_kind][int(rng.integers(len(by_kind[first_kind])))]
        candidates = [i for i in by_kind[second_kind] if i is not first]
        return first, candidates[int(rng.integers(len(candidates)))]

    def row(first, second, messages, language):
        tags = MEDIA_PLACEHOLDERS[first["kind"]] + "\n" + MEDIA_PLACEHOLDERS[second["kind"]] + "\n"
        conversations = [dict(m) for m in messages]
        conversations[0]["content"] = tags + conversations[0]["content"]
        files = [_relative(first["path"], output.parent), _relative(second["path"], output.parent)]
        return {"conversations": conversations, "filename": files, "language": language}

    def generate():
        for number in tqdm(range(pairs), desc="mmmmodal data relate", unit="pair"):
            name = pair_types[number % len(pair_types)]
            first, second = pick_pair(name)
            prompt = template.format(
                first_kind=first["kind"],
                first_text=first["text"],
                second_kind=second["kind"],
                second_text=second["text"],
            )
            try:
                messages = parse_conversation(llm(prompt, seed + number))
            except MalformedReply:
                counts["malformed"] += 1
                continue
            counts[f"kept {name}"] += 1
            yield row(first, second, messages, "en")
            if translate:
                try:
                    malay = parse_conversation(
                        llm(translate_template.format(conversation=as_text(messages)), seed + number)
                    )
                except MalformedReply:
                    counts["malformed translation"] += 1
                    continue
                counts["translated"] += 1
                yield row(first, second, malay, "ms")

    write_rows(generate(), output)
    return {"output": str(output), "asked": pairs, **dict(sorted(counts.items()))}


def _check_template(flag: str, template: str, fields: tuple[str, ...]) -> None:
    """A prompt template that `str.format` cannot fill with `fields` is refused before the LLM is asked."""
    try:
        template.format(**dict.fromkeys(fields, ""))
    except (KeyError, IndexError, ValueError) as error:
        raise InputError(
            f"{flag}: {type(error).__name__} {error} while filling it; it may name "
            f"{', '.join('{' + field + '}' for field in fields)} (write literal braces as {{{{ }}}})"
        ) from None


def _relative(path: str, folder: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), folder.resolve())


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal data relate", __doc__)
    parser.add_argument(
        "items", help="JSONL/Parquet of {kind, path, text} (captions for images, transcripts for audio)"
    )
    parser.add_argument("--output", required=True, help="a .jsonl or .parquet file")
    parser.add_argument("--pairs", type=positive(int), default=1000, help="conversations to write")
    parser.add_argument("--pair-types", default=",".join(PAIR_TYPES),
                        help=f"kinds of pairs to draw, comma-separated; also {', '.join(VIDEO_PAIR_TYPES)}")  # fmt: skip
    llm = parser.add_mutually_exclusive_group(required=True)
    llm.add_argument("--endpoint", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    llm.add_argument("--local-model", help="folder or Hub id of a transformers causal LM")
    parser.add_argument("--model", default="default", help="model name sent to the endpoint")
    parser.add_argument("--api-key", default=None, help="key for the endpoint, if it needs one")
    parser.add_argument("--prompt-template", help="a file with {first_kind} {first_text} {second_kind} {second_text}")
    parser.add_argument(
        "--translate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also write a Malay version of each conversation",
    )
    parser.add_argument("--translate-template", help="a file with {conversation}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawing of pairs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backend = EndpointLLM(args.endpoint, args.model, args.api_key) if args.endpoint else LocalLLM(args.local_model)
    result = relate(
        load_items(args.items),
        backend,
        args.output,
        args.pairs,
        tuple(args.pair_types.split(",")),
        Path(args.prompt_template).read_text() if args.prompt_template else None,
        args.translate,
        Path(args.translate_template).read_text() if args.translate_template else None,
        args.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
