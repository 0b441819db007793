"""`mmmmodal data transcribe`: pseudo-label audio with a Whisper checkpoint and keep only confident transcripts.

The paper pseudo-labelled its audio with Whisper and filtered by score (section 2). This runs
any Whisper checkpoint through transformers' ASR pipeline (batched; files longer than 30 s cut
into overlapping chunks and merged by the pipeline) and keeps, per file, the **average token
log-probability** of the transcript: the mean over all generated tokens (the end token included)
of log p(token), weighted by tokens across chunks. It is the `avg_logprob` openai-whisper reports
and falls back on below -1.0; files scoring under `--threshold` (default -1.0) are dropped.
Output rows are audio rows in the published format: a bilingual transcription request, the
transcript as the answer, the file, and `score`.
"""

import argparse
import json
import os
import sys
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutomaticSpeechRecognitionPipeline, pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

from ..cli_errors import InputError, loading
from ..cli_help import command_parser, positive
from ..media_mmmmodal import load_audio
from ..processing_mmmmodal import MEDIA_PLACEHOLDERS
from .rows import check_output, write_rows

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".aiff", ".aif"}
REQUESTS = (
    "Transcribe this audio.",
    "What is said in this recording?",
    "Transkripsikan audio ini.",
    "Apa yang dikatakan dalam rakaman ini?",
)


class ScoredSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """The ASR pipeline (chunking, batching, merging) whose forward also keeps each chunk's token log-probabilities.

    Only `_forward` differs: `generate` is asked for its scores, and `avg_logprob` and
    `scored_tokens` per chunk flow through to the pipeline's output as lists.
    """

    def _forward(self, model_inputs, return_timestamps=False, return_language=None, **generate_kwargs):
        if self.type not in ("seq2seq", "seq2seq_whisper"):
            raise ValueError(
                f"transcribe needs an encoder-decoder speech model such as Whisper; got a {self.type} model"
            )
        attention_mask = model_inputs.pop("attention_mask", None)
        stride = model_inputs.pop("stride", None)
        model_inputs.pop("num_frames", None)
        is_last = model_inputs.pop("is_last")
        features = model_inputs.pop("input_features")
        scored = {"return_dict_in_generate": True, "output_scores": True}
        if hasattr(self, "_prepare_generate_kwargs"):  # newer transformers (not 5.19): the pipeline's own defaults
            generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, **scored)
        else:
            generate_kwargs = {"generation_config": self.generation_config, **generate_kwargs, **scored}
        generated = self.model.generate(input_features=features, attention_mask=attention_mask, **generate_kwargs)
        log_probs = self.model.compute_transition_scores(generated.sequences, generated.scores, normalize_logits=True)
        new_tokens = generated.sequences[:, -log_probs.shape[1] :]
        ends = (new_tokens == self.model.generation_config.eos_token_id).long()
        valid = (ends.cumsum(-1) - ends) == 0  # every token up to and including the first end token
        counts = valid.sum(-1)
        total = torch.where(valid, log_probs, torch.zeros_like(log_probs)).sum(-1)
        out = {"tokens": generated.sequences, "avg_logprob": total / counts.clamp(min=1), "scored_tokens": counts}
        if stride is not None:
            out["stride"] = stride
        return {"is_last": is_last, **out, **model_inputs}


def audio_files(source: str | Path) -> list[Path]:
    """A folder's audio files (recursively, sorted), a text file listing paths, or one file; `InputError` where
    there is nothing to transcribe."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"no such file or folder: {source}")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise InputError(f"{source} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        return files
    if source.suffix == ".txt":
        return [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    return [source]


def _speech_recognizer(model: str, batch_size: int, device: str | None) -> AutomaticSpeechRecognitionPipeline:
    """The scoring ASR pipeline on `model`; a model that is no encoder-decoder speech model is refused by name."""
    with loading(model, "a Whisper checkpoint"):
        model_type = AutoConfig.from_pretrained(model).model_type
    if model_type not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        raise InputError(f"{model!r} is a {model_type} model; transcribe needs an encoder-decoder speech model such "
                         "as Whisper")  # fmt: skip
    with loading(model, "a Whisper checkpoint"):
        return pipeline(
            "automatic-speech-recognition",
            model=model,
            pipeline_class=ScoredSpeechRecognitionPipeline,
            chunk_length_s=30,
            batch_size=batch_size,
            device=device,
            ignore_warning=True,
        )


def transcribe(
    files: list[Path],
    model: str,
    output: str | Path,
    threshold: float = -1.0,
    batch_size: int = 8,
    language: str | None = None,
    max_new_tokens: int = 128,
    seed: int = 0,
    device: str | None = None,
) -> dict:
    """Transcribe `files`, keep those scoring at least `threshold`, write audio rows to `output`."""
    check_output(output)
    recognizer = _speech_recognizer(model, batch_size, device)
    rate = recognizer.feature_extractor.sampling_rate
    generate_kwargs = {"max_new_tokens": max_new_tokens}
    if language:
        generate_kwargs.update(language=language, task="transcribe")
    output = Path(output)
    rng = np.random.default_rng(seed)
    counts = {"files": len(files), "kept": 0, "below_threshold": 0, "empty": 0, "unreadable": 0}
    in_flight: deque = deque()

    def waveforms():
        for path in files:
            try:
                waveform = load_audio(path, rate)
            except ValueError:
                counts["unreadable"] += 1
                continue
            in_flight.append(path)
            yield {"raw": waveform, "sampling_rate": rate}

    def rows():
        results = recognizer(waveforms(), generate_kwargs=generate_kwargs)
        for result in tqdm(results, total=len(files), desc="mmmmodal data transcribe", unit="file"):
            path = in_flight.popleft()
            weights = [int(n) for n in result["scored_tokens"]]
            score = float(sum(float(s) * n for s, n in zip(result["avg_logprob"], weights)) / max(1, sum(weights)))
            text = result["text"].strip()
            if not text:
                counts["empty"] += 1
                continue
            if score < threshold:
                counts["below_threshold"] += 1
                continue
            counts["kept"] += 1
            yield {
                "conversations": [
                    {
                        "role": "user",
                        "content": f"{MEDIA_PLACEHOLDERS['audio']}\n{REQUESTS[int(rng.integers(len(REQUESTS)))]}",
                    },
                    {"role": "assistant", "content": text},
                ],
                "filename": [os.path.relpath(Path(path).resolve(), output.parent.resolve())],
                "score": score,
                "chunks": len(weights),
            }

    write_rows(rows(), output)
    return {"output": str(output), "threshold": threshold, **counts}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal data transcribe", __doc__)
    parser.add_argument("audio", help="a folder of audio files, a .txt list of paths, or one file")
    parser.add_argument("--model", required=True, help="Whisper checkpoint (folder or Hub id)")
    parser.add_argument("--output", required=True, help="a .jsonl or .parquet file")
    parser.add_argument("--threshold", type=float, default=-1.0, help="lowest average token log-probability kept")
    parser.add_argument("--batch-size", type=positive(int), default=8, help="files per pipeline batch")
    parser.add_argument("--language", default=None, help="e.g. ms or en (multilingual checkpoints)")
    parser.add_argument("--max-new-tokens", type=positive(int), default=128, help="longest transcript per 30 s chunk")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (None: CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampled decoding, if any")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = transcribe(
        audio_files(args.audio),
        args.model,
        args.output,
        args.threshold,
        args.batch_size,
        args.language,
        args.max_new_tokens,
        args.seed,
        args.device,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
