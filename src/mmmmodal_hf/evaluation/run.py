"""`mmmmodal eval`: greedy predictions for every scored turn, written as they come, then the metrics and a report.

A run that stops (killed, interrupted) resumes when the same command runs again: turns already in
`predictions.jsonl` under the same settings are not predicted again; other settings start afresh, saying so.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError

from ..data import UnusableRow, messages_with_media, text_of
from ..processing_mmmmodal import placeholder_kinds
from .metrics import DEFAULT_METRICS, group_metrics, turn_scores
from .remote import Server, judge_scores, predict_remote, question_of
from .turns import ScoredTurn, scored_turns


@dataclass
class EvalSettings:
    """What decides the predictions; a run resumes only under the same."""

    model: str
    data: list[str]
    turns: str = "all"
    max_new_tokens: int = 256
    batch_size: int = 16
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    do_sample: bool = False
    repetition_penalty: float = 1.0
    backend: str = "transformers"  # or "openai": `model` as the server at `base_url` names it; or "vllm"
    base_url: str | None = None
    engine_args: dict | None = None  # --backend vllm: more arguments of `vllm.LLM` (max_model_len, ...)
    video_options: dict | None = None  # the processor's `num_frames` or `fps`, `pool_frames` (not --backend openai)


def evaluate(
    settings: EvalSettings, output_dir, metrics=DEFAULT_METRICS, group_by=("kind", "language"), say=print, judge=None
):
    """Predict, score and report; returns the metrics (also in `output_dir/metrics.json`). `judge`: a `remote.Server`
    whose 1-5 ratings of the answers become the `judge` metric."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    turns, skipped = scored_turns(settings.data, settings.turns, group_by)
    done = _resumed(output_dir, settings, say)
    todo = [turn for turn in turns if turn.key not in done]
    if done and todo:
        say(f"resuming: {len(turns) - len(todo)} of {len(turns)} turns already predicted")
    if todo:
        if settings.backend == "openai":
            records = predict_remote(Server(settings.base_url, settings.model), todo, settings)
        elif settings.backend == "vllm":
            from .offline_vllm import predict_vllm

            records = predict_vllm(todo, settings)
        else:
            records = predict(*_load(settings), todo, settings)
        with open(output_dir / "predictions.jsonl", "a", encoding="utf-8") as predictions:
            for record in records:
                if "skipped" in record:
                    done[record["key"]] = record
                else:
                    predictions.write(json.dumps(record, ensure_ascii=False) + "\n")
                    predictions.flush()
                    done[(record["file"], record["line"], record["turn"])] = record
    if judge is not None:
        metrics = (*metrics, "judge")
    records = _finish_predictions(output_dir, done, metrics, judge, {t.key: question_of(t) for t in turns})
    skipped += [r["skipped"] for r in done.values() if "skipped" in r]
    result = {
        **_grouped_metrics(records, metrics, group_by),
        "skipped": skipped,
        "settings": asdict(settings),
        "metrics": list(metrics),
        "judge": None if judge is None else {"url": judge.base_url, "model": judge.model, "prompt": "AudioBench's"},
        "data": [{"path": path, "sha256": _fingerprint(path)} for path in settings.data],
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    from .report import write_report

    write_report(output_dir, result, group_by)
    return result


def _load(settings: EvalSettings):
    from transformers import AutoModel, AutoProcessor

    from ..cli_errors import loading

    with loading(settings.model):
        model = AutoModel.from_pretrained(settings.model, trust_remote_code=True, dtype=getattr(torch, settings.dtype))
        processor = AutoProcessor.from_pretrained(settings.model, trust_remote_code=True)
    return model.to(settings.device).eval(), processor


WINDOW_BATCHES = 8  # turns are batched by prompt size within windows of this many batches (rows' media kept that long)


def predict(model, processor, turns: list[ScoredTurn], settings: EvalSettings):
    """Records of predicted turns (`ScoredTurn.record()` with `prediction`), and of turns that could not be (with
    `skipped`). Within each window of `WINDOW_BATCHES` batches the turns are batched by prompt size, so a batch
    pads little; each row's media are decoded once and let go after the window of its last turn."""
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    decoded: dict[int, list[dict] | str] = {}  # a row's messages with its media decoded, or why they cannot be
    window = settings.batch_size * WINDOW_BATCHES
    with tqdm(total=len(turns), desc="mmmmodal eval", unit="turn") as bar:
        for window_start in range(0, len(turns), window):
            chunk = sorted(turns[window_start : window_start + window], key=_prompt_size)
            for start in range(0, len(chunk), settings.batch_size):
                yield from _predict_batch(
                    model, processor, chunk[start : start + settings.batch_size], settings, decoded
                )
                bar.update(len(chunk[start : start + settings.batch_size]))
            upcoming = {id(turn.conversation) for turn in turns[window_start + window : window_start + 2 * window]}
            for row in [row for row in decoded if row not in upcoming]:
                del decoded[row]


def _prompt_size(turn: ScoredTurn) -> tuple[int, int]:
    """Media, then characters, of the turn's prompt: what its length grows with."""
    media = characters = 0
    for message in turn.conversation.messages[: turn.message]:
        content = message["content"]
        text = text_of(content)
        media += len(placeholder_kinds(text)) if isinstance(content, str) else sum(
            block.get("type") in ("image", "audio", "video") for block in content)  # fmt: skip
        characters += len(text)
    return media, characters


def _predict_batch(model, processor, turns: list[ScoredTurn], settings: EvalSettings, decoded: dict):
    batch, prompts = [], []
    for turn in turns:
        messages = _row_messages(processor, turn, decoded, settings.video_options)
        if isinstance(messages, str):
            yield turn.skipped(messages)
            continue
        batch.append(turn)
        prompts.append(messages[: turn.message])
    for turn, answer in zip(batch, answer_prompts(model, processor, prompts, settings)):
        yield (
            turn.skipped(answer.reason) if isinstance(answer, Unanswered) else {**turn.record(), "prediction": answer}
        )


@dataclass
class Unanswered:
    """A prompt that was not answered, and why (with `max_new_tokens` it would pass the model's context)."""

    reason: str


def answer_prompts(model, processor, prompts: list[list[dict]], settings: EvalSettings) -> list:
    """Each prompt's answer (`generate` on the batch, left-padded, stripped) or `Unanswered`. A prompt is a
    conversation's messages up to the answer, its media decoded (`processor.load_media`)."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    answers: list = [None] * len(prompts)
    kept = list(range(len(prompts)))

    def encode(indices: list[int]):
        return processor.apply_chat_template(
            [prompts[i] for i in indices], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
            processor_kwargs={"sampling_rate": processor.feature_extractor.sampling_rate, **(settings.video_options or {})},
        )  # fmt: skip

    while kept:
        try:
            inputs = encode(kept)
        except (TemplateError, ValueError):  # a prompt the template or the processor refuses: each alone, to name it
            for i in kept:
                answers[i] = _refusal(encode, i)
            kept = [i for i in kept if answers[i] is None]
            continue
        lengths = inputs["attention_mask"].sum(-1).tolist()
        over = [i for i, n in zip(kept, lengths) if context and n + settings.max_new_tokens > context]
        for i, n in zip(kept, lengths):
            if i in over:
                answers[i] = Unanswered(f"{n} prompt positions + {settings.max_new_tokens} new tokens are more "
                                        f"than the model's context of {context}")  # fmt: skip
        if not over:
            break
        kept = [i for i in kept if i not in over]
    if not kept:
        return answers
    inputs = {key: value.to(settings.device) for key, value in inputs.items()}
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            repetition_penalty=settings.repetition_penalty,
        )  # fmt: skip
    decoded = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    for i, answer in zip(kept, decoded):
        answers[i] = answer.strip()
    return answers


def _refusal(encode, index: int) -> Unanswered | None:
    """Why the template or the processor refuses prompt `index` alone (its text holds a slot token, ...); None: it
    does not."""
    try:
        encode([index])
    except (TemplateError, ValueError) as error:
        return Unanswered(str(error))
    return None


def _row_messages(processor, turn: ScoredTurn, decoded: dict, video_options: dict | None):
    """The row's messages with its media decoded (once for all its turns), or why a medium cannot be used."""
    row = id(turn.conversation)
    if row not in decoded:
        conversation = turn.conversation
        try:
            images, audio = processor.load_media(conversation.images, conversation.audio)
            videos = processor.load_videos(conversation.videos, **(video_options or {}))
            decoded[row] = messages_with_media(conversation, images, audio, videos)
        except (ValueError, UnusableRow) as error:
            decoded[row] = str(error)
    return decoded[row]


def _resumed(output_dir: Path, settings: EvalSettings, say) -> dict:
    """The turns already predicted under these settings, by (file, line, turn); other settings start afresh."""
    settings_file, predictions = output_dir / "settings.json", output_dir / "predictions.jsonl"
    current = asdict(settings)
    previous = json.loads(settings_file.read_text()) if settings_file.exists() else None
    if previous is not None and previous != current and predictions.exists():
        changed = ", ".join(sorted(k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k)))
        say(f"settings changed ({changed}): starting afresh")
        predictions.unlink()
    settings_file.write_text(json.dumps(current, indent=2) + "\n")
    done = {}
    if predictions.exists():
        lines = predictions.read_text(encoding="utf-8").splitlines(keepends=True)
        complete = [line for line in lines if line.endswith("\n")]  # a line cut off by a kill is predicted again
        for line in complete:
            record = json.loads(line)
            done[(record["file"], record["line"], record["turn"])] = record
        if len(complete) != len(lines):
            predictions.write_text("".join(complete), encoding="utf-8")
    return done


def _finish_predictions(output_dir: Path, done: dict, metrics, judge=None, questions=None) -> list[dict]:
    """Every predicted turn with its scores, written back in data order (a resumed run wrote in two passes); a
    judge's rating already given is kept."""
    records = sorted((r for r in done.values() if "skipped" not in r), key=lambda r: (r["file"], r["line"], r["turn"]))
    for record in records:
        rating = record.get("scores", {}).get("judge")
        record["scores"] = turn_scores(
            record["prediction"], record["reference"], metrics, record["transcription"], record.get("choices")
        )
        if rating is not None and judge is not None:
            record["scores"]["judge"] = rating
    if judge is not None:
        judge_scores(judge, [r for r in records if "judge" not in r["scores"]], questions)
    partial = output_dir / "predictions.jsonl.partial"
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    partial.replace(output_dir / "predictions.jsonl")
    return records


def _grouped_metrics(records: list[dict], metrics, group_by) -> dict:
    result = {"overall": group_metrics(records, metrics)}
    for name in group_by:
        values = sorted({record.get(name, "(none)") for record in records})
        result[f"by_{name}"] = {
            v: group_metrics([r for r in records if r.get(name, "(none)") == v], metrics) for v in values
        }
    return result


def _fingerprint(path: str) -> str:
    """sha256 over the data files at `path`, in order (names and bytes; a saved dataset's Arrow files)."""
    from ..data import data_files

    digest = hashlib.sha256()
    for data in data_files(path):
        for file in sorted(data.glob("*.arrow")) if data.is_dir() else [data]:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _versions() -> dict:
    from importlib.metadata import version

    import transformers

    return {
        "mmmmodal-hf": version("mmmmodal-hf"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def recompute(output_dir, metrics=DEFAULT_METRICS, group_by=("kind", "language")) -> dict:
    """The metrics of `output_dir/predictions.jsonl` computed again from its predictions and references."""
    lines = Path(output_dir, "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return _grouped_metrics([json.loads(line) for line in lines], metrics, group_by)


__all__ = ["EvalSettings", "evaluate", "predict", "recompute"]
