"""`mmmmodal eval --backend vllm`: the answers from an offline `vllm.LLM` on this machine (the `[vllm]` extra), the
same OpenAI chat parts `mmmmodal serve` takes, batch by batch."""

import gc
import os

from .remote import openai_prompt
from .turns import ScoredTurn


def predict_vllm(turns: list[ScoredTurn], settings):
    """`predict`'s records from `vllm.LLM(settings.model)`; `settings.engine_args` go to the engine as they are, after
    the video options (`engine_video_args`)."""
    from tqdm.auto import tqdm

    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", "mmmmodal")  # media decoded and refused as the processor does
    from vllm import LLM, SamplingParams

    engine_args = {**engine_video_args(settings.video_options), **(settings.engine_args or {})}
    engine = LLM(model=settings.model, trust_remote_code=True, dtype=settings.dtype, seed=settings.seed, **engine_args)
    sampling = SamplingParams(
        temperature=0, max_tokens=settings.max_new_tokens, seed=settings.seed,
        repetition_penalty=settings.repetition_penalty,
    )  # fmt: skip
    bar = tqdm(total=len(turns), desc="mmmmodal eval", unit="turn")
    try:
        yield from _batches(engine, sampling, turns, settings.batch_size, bar)
    finally:  # the engine's processes stop now, not at interpreter exit (where vLLM's shutdown logs fail)
        bar.close()
        del engine
        gc.collect()


def engine_video_args(options: dict | None) -> dict:
    """The processor's video options as the engine takes them: how many frames the media connector reads
    (`media_io_kwargs`), and whether the processor pools them (`mm_processor_kwargs`)."""
    options, args = options or {}, {}
    if reading := {key: options[key] for key in ("num_frames", "fps") if key in options}:
        args["media_io_kwargs"] = {"video": reading}
    if options.get("pool_frames"):
        args["mm_processor_kwargs"] = {"pool_frames": True}
    return args


def _refusals() -> tuple[type[Exception], ...]:
    """What the engine raises for one prompt it refuses: a medium or the context (ValueError, OSError), or its chat
    template (vLLM's `VLLMValidationError`, which is no ValueError)."""
    from vllm.exceptions import VLLMClientError

    return ValueError, OSError, VLLMClientError


def _batches(engine, sampling, turns: list[ScoredTurn], batch_size: int, bar):
    for start in range(0, len(turns), batch_size):
        batch = turns[start : start + batch_size]
        try:
            outputs = engine.chat([openai_prompt(turn) for turn in batch], sampling, use_tqdm=False)
        except _refusals():  # one turn refused: each asked alone, to name it
            outputs = [_alone(engine, turn, sampling) for turn in batch]
        for turn, output in zip(batch, outputs):
            if isinstance(output, str):
                yield turn.skipped(output)
            else:
                yield {**turn.record(), "prediction": output.outputs[0].text.strip()}
        bar.update(len(batch))


def _alone(engine, turn: ScoredTurn, sampling):
    try:
        return engine.chat(openai_prompt(turn), sampling, use_tqdm=False)[0]
    except _refusals() as error:
        return str(error)


__all__ = ["predict_vllm", "engine_video_args"]
