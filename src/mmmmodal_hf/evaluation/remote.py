"""What `mmmmodal eval` asks of OpenAI-compatible servers: the answers (`--backend openai`, such as `mmmmodal serve`
on a GPU machine) and, optionally, a judge's 1-5 score of each open answer against its reference (`--judge-url`).
"""

import base64
import mimetypes
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ..cli_errors import InputError
from ..data import messages_with_media, text_of
from ..media_mmmmodal import URL_PREFIXES
from ..processing_mmmmodal import PLACEHOLDER_RE
from .turns import ScoredTurn

TIMEOUT = httpx.Timeout(600, connect=10)

# AudioBench's judge prompt (its "llama3_70b_judge"), worded for any kind of question.
JUDGE_PROMPT = """[Reference Answer]
{reference}

[Model Answer]
{prediction}

[Question]
{question}

[Task]
Rate the model's answer based on its alignment with the reference answer, focusing on accuracy and relevance to the
reference provided. Please be critical on the details.
Criteria: Assess if the model's response mirrors the reference in terms of content, accuracy, and relevance.
Score1: The answer is completely misaligned, providing incorrect or irrelevant information compared to the reference.
Score2: The answer shows minimal alignment, often misunderstanding or providing irrelevant details unrelated to the
reference.
Score3: The answer recognizes the topic but diverges significantly from the reference in accuracy or relevance.
Score4: The answer is generally accurate and relevant, but contains minor errors, omissions, or inaccuracies.
Score5: The answer is highly accurate, detailed, and matches the reference answer perfectly, capturing its essence
and detail.

Your response should be formatted as follows:
Explanation: (Provide a concise explanation of your rating, comparing the reference answer with the model's
response.)
Rating: (int)"""
_RATING = re.compile(r"Rating:\s*\**\s*([1-5])")


class Server:
    """An OpenAI-compatible server at `base_url` (…/v1); `model` defaults to the first it lists."""

    def __init__(self, base_url: str, model: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(timeout=TIMEOUT)
        served = [entry["id"] for entry in self._request("GET", "/models")["data"]]  # reached before any turn
        if not served or (model is not None and model not in served):
            raise InputError(f"{self.base_url} serves {', '.join(served) or 'no model'}, not {model or 'any'}")
        self.model = model or served[0]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.client.request(method, self.base_url + path, json=body)
        except httpx.HTTPError as error:
            raise InputError(f"cannot reach {self.base_url}: {type(error).__name__}: {error}") from None
        if response.status_code == 400:  # the request's own problem (a medium, the context): that turn's
            raise ValueError(_server_message(response))
        if response.is_error:
            raise InputError(
                f"{self.base_url}{path} answered HTTP {response.status_code}: {_server_message(response)}"
            )
        return response.json()

    def chat(self, messages: list[dict], max_tokens: int, seed: int) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": seed}
        return self._request("POST", "/chat/completions", body)["choices"][0]["message"]["content"] or ""


def openai_prompt(turn: ScoredTurn) -> list[dict]:
    """The messages before a scored turn's answer as OpenAI chat parts, media by their sources (the vllm and openai
    backends)."""
    conversation = turn.conversation
    return openai_messages(messages_with_media(conversation, conversation.images, conversation.audio)[: turn.message])


def openai_messages(messages: list[dict]) -> list[dict]:
    """Messages as OpenAI chat parts: text, `image_url`, `input_audio` and `video_url` (files as base64, URLs as they
    are). A published row's text is cut at its tags, each medium a part in its place."""
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        media = [b for b in content if b.get("in_text")]
        parts = []
        for block in content:
            if block.get("in_text"):
                continue
            if block["type"] == "text" and media:
                parts += _cut_at_tags(block["text"], iter(media))
            else:
                parts.append(_part(block))
        converted.append({"role": message["role"], "content": parts})
    return converted


def _cut_at_tags(text: str, media) -> list[dict]:
    parts, last = [], 0
    for match in PLACEHOLDER_RE.finditer(text):
        if match.lastgroup == "stray":
            continue
        if text[last : match.start()].strip():
            parts.append({"type": "text", "text": text[last : match.start()].strip()})
        parts.append(_part(next(media)))
        last = match.end()
    if text[last:].strip():
        parts.append({"type": "text", "text": text[last:].strip()})
    return parts


def _part(block: dict) -> dict:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    source, url = block.get(kind, block.get("path", block.get("url"))), f"{kind}_url"
    if isinstance(source, str) and source.startswith(URL_PREFIXES):
        return {"type": url, url: {"url": source}}
    if isinstance(source, (bytes, bytearray)):  # a row's base64 medium, decoded when the row was read
        data, source = base64.b64encode(source).decode(), ""
    else:
        data = base64.b64encode(Path(source).read_bytes()).decode()
    if kind in ("image", "video"):
        mime = mimetypes.guess_type(str(source))[0] or f"{kind}/{'png' if kind == 'image' else 'mp4'}"
        return {"type": url, url: {"url": f"data:{mime};base64,{data}"}}
    return {"type": "input_audio", "input_audio": {"data": data, "format": Path(source).suffix.lstrip(".") or "wav"}}


def predict_remote(server: Server, turns: list[ScoredTurn], settings):
    """`predict`'s records, answered by `server`: `batch_size` requests at a time, in the order of `turns`."""
    from tqdm.auto import tqdm

    def ask(turn: ScoredTurn) -> dict:
        try:
            answer = server.chat(openai_prompt(turn), settings.max_new_tokens, settings.seed)
        except InputError:  # the server itself: unreachable or failing, for every turn
            raise
        except (ValueError, OSError) as error:  # this turn refused by the server, or a file that cannot be read
            return turn.skipped(str(error))
        return {**turn.record(), "prediction": answer.strip()}

    with ThreadPoolExecutor(max_workers=settings.batch_size) as pool:
        yield from tqdm(pool.map(ask, turns), total=len(turns), desc="mmmmodal eval", unit="turn")


def judge_scores(judge: Server, records: list[dict], questions: dict, workers: int = 8) -> None:
    """Each record's `scores["judge"]`: the judge's 1-5 rating (None where it gave no rating)."""

    def rate(record: dict) -> int | None:
        prompt = JUDGE_PROMPT.format(
            reference=record["reference"], prediction=record["prediction"], question=questions[_key(record)]
        )
        reply = judge.chat([{"role": "user", "content": prompt}], max_tokens=512, seed=0)
        match = _RATING.search(reply)
        return int(match.group(1)) if match else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for record, rating in zip(records, pool.map(rate, records)):
            if rating is not None:
                record["scores"]["judge"] = rating


def question_of(turn: ScoredTurn) -> str:
    """The text of the user turn a scored turn answers."""
    return text_of(turn.conversation.messages[turn.message - 1]["content"]).strip()


def _key(record: dict) -> tuple:
    return record["file"], record["line"], record["turn"]


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return error.get("message", response.text) if isinstance(error, dict) else str(error)
    except ValueError:
        return response.text[:300]


__all__ = [
    "Server",
    "JUDGE_PROMPT",
    "openai_messages",
    "openai_prompt",
    "predict_remote",
    "judge_scores",
    "question_of",
]
