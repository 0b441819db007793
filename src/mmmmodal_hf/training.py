"""The published two-stage recipe through `Trainer`: `align`, `finetune`, and a `lora` variant.

- align: encoders and language model frozen; the projectors train, and so do the embedding rows
  of the four tag tokens (the reference code left them at random init).
- finetune: encoders frozen; everything else trains (the language model, its head, the projectors).
- lora: PEFT LoRA on the language model, projectors trained fully; `export_lora` merges.

Distributed runs (torchrun, DeepSpeed) need every rank to produce gradients for the same
parameters; `MMMModalTrainer` gives the model an exact zero that depends on the branches a batch does
not use (`graph_anchor`, `_unused_branch_anchor`), so no blank placeholder media are needed.
What training needs reaches the model as explicit inputs or subclasses, never as hooks: align's tag rows
(`trainable_token_ids`; `RowsLearningHead` for a tied head), `training_head.py` (the LM head at labelled
positions, `logits_to_keep` as a mask; `GroupedRowsHead`) and `tower_memo.py` (frozen towers' outputs as
`image_tower_states` / `audio_tower_states`).
"""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINING_ARGS_NAME

from .cli_errors import InputError, loading, require_loadable
from .collator import MMMModalDataCollator, MMMModalPackingCollator
from .data import (
    IGNORE_INDEX,
    ConversationDataset,
    EncodeStats,
    LengthGroupedBatchSampler,
    StreamingConversationDataset,
    answer_token_ids,
    load_rows,
)
from .media_mmmmodal import sample_times
from .modeling_mmmmodal import MMMModalForConditionalGeneration
from .processing_mmmmodal import MMMModalProcessor
from .tower_memo import RememberedTowers
from .training_head import GroupedRowsHead, RowsLearningHead, summed_loss

logger = logging.getLogger(__name__)

STAGES = ("align", "finetune", "lora")
DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed"
LANGUAGE_MODEL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class MMMModalTrainArguments:
    """What to train on and how; every `TrainingArguments` flag is accepted beside these."""

    stage: str = field(metadata={"help": "align | finetune | lora"})
    model: str = field(metadata={"help": "folder or Hub id of an MMMModal checkpoint (from `mmmmodal build`)"})
    data: str = field(
        metadata={
            "help": "JSONL/JSON/Parquet file, a folder of them, a dataset saved with `save_to_disk` or a Hub "
            "dataset id (`owner/name`); `FOLDER:split` for one split of several"
        }
    )
    eval_data: str | None = field(default=None, metadata={"help": "held-out data, same formats"})
    block_size: int = field(
        default=8192, metadata={"help": "longest conversation, and longest packed row (published: 8192)"}
    )
    packing: bool | None = field(
        default=None,
        metadata={
            "help": "a step's conversations side by side in rows without padding (None: on for finetune and lora)"
        },
    )
    train_on: str = field(
        default="answers", metadata={"help": "answers | all (the whole conversation, as the paper did)"}
    )
    streaming: bool = field(default=False, metadata={"help": "stream the data instead of loading it"})
    cache_rows: bool = field(
        default=False,
        metadata={
            "help": "keep encoded rows in memory after their first epoch (small data seen several times; "
            "with dataloader workers, set --dataloader_persistent_workers)"
        },
    )
    align_modalities: str = field(
        default="image,audio", metadata={"help": "projectors that train in align: image, audio, or both"}
    )
    lora_r: int = field(default=16, metadata={"help": "lora: rank of the adapters"})
    lora_alpha: int = field(default=32, metadata={"help": "lora: scale of the adapters (alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "lora: dropout on the adapters' input"})
    lora_target_modules: str = field(
        default=",".join(LANGUAGE_MODEL_PROJECTIONS),
        metadata={"help": "lora: the language model's projections that get adapters, comma-separated"},
    )
    model_dtype: str | None = field(default=None, metadata={"help": "dtype to load the weights in, e.g. bfloat16"})
    train_encoders: bool = field(
        default=False, metadata={"help": "let the SigLIP and Whisper towers train in finetune (published: frozen)"}
    )
    remember_tower_outputs: int = field(
        default=0,
        metadata={
            "help": "run each frozen tower once per distinct medium and reuse its output, keeping up to this many "
            "media (0: off; memory per medium: slots x tower width floats, see TowerOutputMemo)"
        },
    )
    grow_head_from_targets: bool = field(
        default=False,
        metadata={
            "help": "finetune only, for an LM trained from scratch: compute the LM head on the rows of tokens the "
            "answers hold and one shared row per run of unused tokens (the whole head's loss and gradients; "
            "much faster with a large, little-used vocabulary; a pretrained head would lose its unused rows)"
        },
    )

    num_frames: int | None = field(
        default=None, metadata={"help": "frames taken from each video (default 8; or give --fps)"}
    )
    fps: float | None = field(
        default=None, metadata={"help": "frames per second of video taken, instead of --num_frames"}
    )
    max_frames: int | None = field(default=None, metadata={"help": "most frames taken from a video with --fps (64)"})
    load_audio_from_video: bool = field(
        default=True, metadata={"help": "a video's soundtrack follows its frames, where it has one"}
    )
    pool_frames: bool = field(
        default=False,
        metadata={"help": "a quarter of the slots per video frame, averaged in 2x2 groups (not what released "
                  "checkpoints saw)"},
    )  # fmt: skip

    @property
    def video_kwargs(self) -> dict:
        """How the processor reads videos: its `videos_kwargs`, as `processor(...)` and `apply_chat_template` take them."""
        given = {"num_frames": self.num_frames, "fps": self.fps, "max_frames": self.max_frames}
        return {key: value for key, value in given.items() if value is not None} | {
            "load_audio_from_video": self.load_audio_from_video,
            "pool_frames": self.pool_frames,
        }

    def __post_init__(self):
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("give --num_frames or --fps, not both")
        try:
            sample_times(0.0, self.num_frames, self.fps, self.max_frames)  # each a positive number, or named
        except ValueError as error:
            raise ValueError(f"--{error}") from None
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}; got {self.stage!r}")
        if self.train_on not in ("answers", "all"):
            raise ValueError(f"--train_on must be 'answers' or 'all'; got {self.train_on!r}")
        modalities = set(self.align_modalities.split(","))
        if not modalities or not modalities <= {"image", "audio"}:
            raise ValueError(f"--align_modalities takes image, audio or image,audio; got {self.align_modalities!r}")
        if self.cache_rows and self.streaming:
            raise ValueError("--cache_rows keeps the data set in memory; it does not combine with --streaming")
        if self.remember_tower_outputs < 0:
            raise ValueError(
                f"--remember_tower_outputs takes a number of media, 0 for off; got {self.remember_tower_outputs}"
            )
        if self.remember_tower_outputs and self.train_encoders:
            raise ValueError("--remember_tower_outputs needs frozen towers; it does not combine with --train_encoders")
        if self.grow_head_from_targets and self.stage != "finetune":
            # In align and lora the head does not train: making its unused rows equal would only lose them.
            raise ValueError(f"--grow_head_from_targets is for the finetune stage; got --stage {self.stage}")
        if self.packing is None:
            self.packing = self.stage != "align"


def tag_token_ids(config) -> list[int]:
    return [
        config.image_start_token_id,
        config.image_end_token_id,
        config.audio_start_token_id,
        config.audio_end_token_id,
    ]


def prepare_stage(
    model: MMMModalForConditionalGeneration,
    stage: str,
    align_modalities=("image", "audio"),
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    lora_target_modules=LANGUAGE_MODEL_PROJECTIONS,
    train_encoders: bool = False,
):
    """Set which parameters train for `stage`; returns the model to train (a PEFT model for lora).

    `train_encoders` lets the SigLIP and Whisper towers train in `finetune` too (the published
    recipe keeps them frozen; small models trained from scratch, like the demo's, need them).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}; got {stage!r}")
    model.requires_grad_(False)
    inner = model.model
    if stage == "align":
        for modality in align_modalities:
            getattr(inner, f"{modality}_projector").requires_grad_(True)
        # `MMMModalTrainer.trainable_token_ids` lets only the four tags' rows of it learn.
        model.get_input_embeddings().weight.requires_grad_(True)
        return model
    inner.image_projector.requires_grad_(True)
    inner.audio_projector.requires_grad_(True)
    if stage == "finetune":
        # Everything but the towers: the language model, its head, the projectors, and any input map a model
        # of this family adds before the language model (the demo's).
        model.requires_grad_(True)
        inner.vision_tower.requires_grad_(train_encoders)
        inner.audio_tower.requires_grad_(train_encoders)
        return model

    from peft import LoraConfig, get_peft_model

    # Only the language model's projections get adapters: the encoders' layers share these names.
    pattern = r"model\.language_model\..*\.(" + "|".join(lora_target_modules) + r")$"
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=pattern,
        modules_to_save=["image_projector", "audio_projector"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_model(name_or_path: str | Path, dtype=None) -> MMMModalForConditionalGeneration:
    """An MMMModal-family model from a folder or Hub id: this package's classes for `mmmmodal` folders, the
    folder's own code for a model that adds to them (the demo's, `trust_remote_code`)."""
    with loading(name_or_path):
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=True)


# A projector's own layers, reached by calling it on an empty input; anything else a model of this family adds
# to a projector is reached by a zero sum.
_PROJECTOR_LAYERS = {"linear_1", "act", "linear_2", "conv", "linear"}


def _unused_branch_anchor(inner, image_missing: bool, audio_missing: bool) -> torch.Tensor:
    """A zero that depends on every trainable parameter of the branches this batch does not use.

    Under DDP or ZeRO, a rank whose batch holds no image (or no audio) would otherwise leave that
    projector out of the graph and stall or fail the gradient reduction. The published fix prepended
    a blank image and 30 s of silence to every sample (1065 dead positions and two encoder passes);
    this costs one empty projector call and adds exact zeros.
    """
    config = inner.config
    anchor = torch.zeros((), device=inner.image_projector.linear_1.weight.device)
    parts = []
    if image_missing:
        empty = inner.image_projector.linear_1.weight.new_zeros(0, config.vision_config.hidden_size)
        anchor = anchor + inner.image_projector(empty).sum() * 0.0
        parts += [inner.vision_tower, inner.image_projector]
    if audio_missing:
        empty = inner.audio_projector.conv.weight.new_zeros(0, config.audio_conv_kernel, config.audio_config.d_model)
        anchor = anchor + inner.audio_projector(empty).sum() * 0.0
        parts += [inner.audio_tower, inner.audio_projector]
    for part in parts:  # towers (frozen as published) when they train, and what projectors hold beside their layers
        children = (
            [m for name, m in part.named_children() if name not in _PROJECTOR_LAYERS]
            if part in (inner.image_projector, inner.audio_projector)
            else [part]
        )
        for child in children:
            for parameter in child.parameters():
                if parameter.requires_grad:
                    anchor = anchor + parameter.sum() * 0.0
    return anchor


def _missing_media(inputs: dict) -> tuple[bool, bool]:
    """Whether the batch holds no image, and whether it holds no audio."""
    return tuple(inputs.get(name) is None or inputs[name].shape[0] == 0 for name in ("pixel_values", "input_features"))


def combine_alignments(image_run: str | Path, audio_run: str | Path, output_dir: str | Path) -> Path:
    """Join two `align` runs made separately, as published: vision from one, audio from the other.

    The result is `image_run`'s checkpoint with the audio projector and the `<audio>`/`</audio>`
    embedding rows of `audio_run`. Both runs must start from the same base checkpoint.
    """
    model, audio_model = load_model(image_run), load_model(audio_run)
    for name in ("vision_tower", "audio_tower", "language_model"):
        ours, theirs = getattr(model.model, name).state_dict(), getattr(audio_model.model, name).state_dict()
        different = sorted(set(ours) ^ set(theirs)) or [
            key for key in ours if key != "embed_tokens.weight" and not torch.equal(ours[key], theirs[key])
        ]
        if different:
            raise InputError(f"{image_run} and {audio_run} do not share a base: their {name} differs ({different[0]})")
    model.model.audio_projector.load_state_dict(audio_model.model.audio_projector.state_dict())
    rows = [model.config.audio_start_token_id, model.config.audio_end_token_id]
    with torch.no_grad():
        model.get_input_embeddings().weight[rows] = audio_model.get_input_embeddings().weight[rows]
    model.save_pretrained(output_dir)
    MMMModalProcessor.from_pretrained(image_run, trust_remote_code=True).save_pretrained(output_dir)
    from .conversion.model_card import render_trained_model_card

    render_trained_model_card(
        output_dir,
        str(image_run),
        training=f"`mmmmodal align-combine`: the vision alignment of `{image_run}` with the audio projector and "
        f"the `<audio>`/`</audio>` embeddings of `{audio_run}`, as the published recipe combined its two align runs.",
    )
    return Path(output_dir)


def export_lora(peft_model, processor, output_dir: str | Path) -> Path:
    """Merge LoRA adapters (and the trained projectors) into a plain, Hub-ready MMMModal folder."""
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return Path(output_dir)


class MMMModalTrainer(Trainer):
    """`Trainer` that computes the LM head only where a next token is to be predicted (`training_head`), applies
    no weight decay to an embedding of which only some rows train, and groups conversations by length
    (`train_sampling_strategy="group_by_length"`) without encoding them first."""

    grouped_head: GroupedRowsHead | None = None  # `--grow_head_from_targets`: the model's head, few rows in use
    remembered_towers: RememberedTowers | None = None  # `--remember_tower_outputs`
    trainable_token_ids: torch.Tensor | None = None  # align: only these tokens' embedding rows learn (the tags')

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Padding-free rows mark conversations by their restarting positions, which a KV cache would hide.
        inputs = {**inputs, "use_cache": False}
        if self.remembered_towers is not None:  # frozen towers' outputs, computed once per medium
            inputs.update(self.remembered_towers.tower_states(inputs))
        if model.training and torch.is_grad_enabled():  # the branches this batch does not use take part, with 0
            inputs["graph_anchor"] = _unused_branch_anchor(self._inner_model(model), *_missing_media(inputs))
        if self.trainable_token_ids is not None:
            inputs["trainable_token_ids"] = self.trainable_token_ids
        if not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        labelled = targets != IGNORE_INDEX
        if self.grouped_head is not None:
            self.grouped_head.mark_in_use(targets[labelled])
        # Logits at the labelled positions alone, `(num_labelled, vocab)`: the position before each target.
        outputs = model(**inputs, logits_to_keep=torch.nn.functional.pad(labelled, (0, 1)))
        total = summed_loss(self.grouped_head, outputs.logits, targets[labelled].to(outputs.logits.device))
        count = num_items_in_batch if num_items_in_batch is not None else labelled.sum().clamp(min=1)
        loss = total / (count.to(total.device) if torch.is_tensor(count) else count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer's own loss does
        return (loss, outputs) if return_outputs else loss

    def _inner_model(self, model):
        """The `MMMModalModel` inside what the trainer holds (DDP or DeepSpeed, and PEFT, around it)."""
        model = self.accelerator.unwrap_model(model)
        return (model.get_base_model() if hasattr(model, "get_base_model") else model).model

    def get_decay_parameter_names(self, model) -> list[str]:
        """Trainer's, but no decay on an embedding of which only some rows learn: decay would shrink all the others."""
        names = super().get_decay_parameter_names(model)
        if self.trainable_token_ids is None:
            return names
        embedding = model.get_input_embeddings().weight
        return [name for name, parameter in model.named_parameters() if name in names and parameter is not embedding]

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, ConversationDataset):
            group = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedBatchSampler(dataset.lengths(), group)
        return super()._get_train_sampler(train_dataset)


class DataStatsCallback(TrainerCallback):
    """Adds the data counters (skipped and truncated rows, padding fraction) to every log line."""

    def __init__(self, stats: EncodeStats):
        self.stats = stats

    def on_log(self, args, state, control, logs=None, **kwargs):
        # With dataloader workers the counting happens in their processes; log nothing rather than zeros.
        if logs is not None and self.stats.rows:
            logs.update(self.stats.as_logs())


def init_cpu_distributed(timeout_seconds: int) -> bool:
    """On CPU, start the gloo process group ourselves: `Trainer` applies no `ddp_timeout` there."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_seconds))
    return True


def build_datasets(args: MMMModalTrainArguments, processor, stats: EncodeStats):
    rows = load_rows(args.data, streaming=args.streaming)
    if args.streaming:
        train = StreamingConversationDataset(rows, processor, args.block_size, args.train_on, stats, args.video_kwargs)
    else:
        train = ConversationDataset(
            rows, processor, args.block_size, args.train_on, stats, args.cache_rows, args.video_kwargs
        )
    evaluation = None
    if args.eval_data:
        evaluation = ConversationDataset(
            load_rows(args.eval_data), processor, args.block_size, args.train_on, video_kwargs=args.video_kwargs
        )
    return train, evaluation


def build_collator(args: MMMModalTrainArguments, processor, stats: EncodeStats):
    pad = processor.tokenizer.pad_token_id
    return MMMModalPackingCollator(pad, args.block_size, stats) if args.packing else MMMModalDataCollator(pad, stats)


def build_trainer(args: MMMModalTrainArguments, training_args: TrainingArguments, callbacks=()):
    """The model prepared for `args.stage`, its data, and a `Trainer` ready to run."""
    sharded = is_deepspeed_zero3_enabled() or training_args.fsdp
    if args.remember_tower_outputs and sharded:
        # Sharded towers gather their weights collectively in forward; a rank that found all its
        # media remembered would skip a gather its peers wait in.
        raise ValueError("--remember_tower_outputs does not combine with DeepSpeed ZeRO-3 or FSDP")
    if args.grow_head_from_targets and sharded:
        # The grown head reads rows of the head's weight outside its forward, where a shard is all there is.
        raise ValueError("--grow_head_from_targets does not combine with DeepSpeed ZeRO-3 or FSDP")
    # Seeded before the stage is prepared, as transformers' example scripts do: LoRA's adapters are
    # initialised from the global generator there, before `Trainer` seeds it.
    set_seed(training_args.seed)
    require_loadable(args.model, "an MMMModal model", "config.json")  # a folder that is not there, named as the model
    with loading(args.model, "a processor", needs=None):  # trusted: the folder the command was told to train
        processor = MMMModalProcessor.from_pretrained(args.model, trust_remote_code=True)
    stats = EncodeStats()
    train_dataset, eval_dataset = build_datasets(args, processor, stats)  # before the model: bad data fails at once
    dtype = getattr(torch, args.model_dtype) if args.model_dtype else None
    model = prepare_stage(
        load_model(args.model, dtype=dtype),
        args.stage,
        tuple(args.align_modalities.split(",")),
        args.lora_r,
        args.lora_alpha,
        args.lora_dropout,
        tuple(args.lora_target_modules.split(",")),
        args.train_encoders,
    )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    remembered = RememberedTowers(base, args.remember_tower_outputs) if args.remember_tower_outputs else None
    if args.streaming:
        # accelerate dispatches an iterable data set's batches from one process and cuts every tensor to the batch
        # size along its first dimension: `pixel_values` holds a row per image, not per conversation, so a batch
        # with more images than conversations lost images. Each process reads the stream itself instead.
        training_args.accelerator_config.dispatch_batches = False
    known = None
    if args.grow_head_from_targets and not args.streaming:
        # A streamed data set cannot be read ahead: its answers' rows are added as they come.
        known = answer_token_ids(train_dataset.rows, processor.tokenizer)
    trainer = MMMModalTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=build_collator(args, processor, stats),
        processing_class=processor,
        callbacks=[DataStatsCallback(stats), *callbacks],
    )
    trainer.remembered_towers = remembered
    if args.stage == "align":
        trainer.trainable_token_ids = torch.tensor(tag_token_ids(base.config))
        if base.get_output_embeddings().weight is base.get_input_embeddings().weight:  # a tied head shares the rows
            base.set_output_embeddings(RowsLearningHead(base.get_output_embeddings(), trainer.trainable_token_ids))
    if args.grow_head_from_targets:
        trainer.grouped_head = GroupedRowsHead(base.get_output_embeddings(), rows_in_use=known)
        base.set_output_embeddings(trainer.grouped_head)
    return trainer


def save_stage_output(trainer: Trainer, stage: str) -> Path:
    """Write the trained model as a Hub-ready folder (LoRA adapters merged) and return its path.

    The folder holds what a Hub repo should: safetensors, configs, tokenizer, processor, the model
    code and a model card saying how it was trained; `mmmmodal push` takes it as it is. Trainer's own
    state (its arguments, optimizer, scheduler) stays in the run's `checkpoint-N` folders.
    """
    output_dir = Path(trainer.args.output_dir)
    processor = trainer.processing_class
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    start, trained = model.name_or_path, _trained_parts(model)
    if stage == "lora":
        output_dir = output_dir / "merged"
        if trainer.is_world_process_zero():
            export_lora(trainer.model, processor, output_dir)
    else:
        trainer.save_model(str(output_dir))  # gathers sharded weights (ZeRO-3, FSDP) where needed
        if trainer.is_world_process_zero():
            (output_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # pickled: not for a Hub repo
            processor.save_pretrained(output_dir)
    if trainer.is_world_process_zero():
        _carry_remote_code(start, output_dir)
        from .conversion.model_card import render_trained_model_card

        args = trainer.args
        render_trained_model_card(
            output_dir,
            start,
            training=f"`mmmmodal train --stage {stage}` from `{start}`: {trainer.state.global_step} steps at "
            f"learning rate {args.learning_rate:g}, {args.per_device_train_batch_size} conversations per device "
            f"step; trained: {', '.join(trained) or 'nothing'} (everything else frozen).",
        )
    return output_dir


def _carry_remote_code(start: str, output_dir: Path) -> None:
    """Copy the code files `start`'s `auto_map` names (and the files they import) that the saved folder lacks.

    transformers writes the code of this package's registered classes itself; a model that adds to
    them (the demo's) names its own module, which must travel with the weights too.
    """
    config_file = Path(start) / "config.json"
    if not config_file.is_file():
        return
    import json

    from transformers.dynamic_module_utils import get_relative_import_files

    references = (json.loads(config_file.read_text()).get("auto_map") or {}).values()
    for module in {reference.split("--")[-1].split(".")[0] for reference in references if isinstance(reference, str)}:
        source = Path(start) / f"{module}.py"
        if not source.is_file():
            continue
        for needed in [source, *map(Path, get_relative_import_files(source))]:
            if not (output_dir / needed.name).is_file():
                shutil.copyfile(needed, output_dir / needed.name)


def _trained_parts(model) -> list[str]:
    """The model's parts (towers, projectors, language model, head) that have trainable parameters."""
    inner = model.model
    parts = {
        "vision tower": inner.vision_tower,
        "audio tower": inner.audio_tower,
        "image projector": inner.image_projector,
        "audio projector": inner.audio_projector,
        "language model": inner.language_model,
        "LM head": model.lm_head,
    }
    return [name for name, part in parts.items() if any(p.requires_grad for p in part.parameters())]


def train(args: MMMModalTrainArguments, training_args: TrainingArguments, callbacks=()) -> Path:
    """Run one stage and write a Hub-ready folder under `training_args.output_dir`."""
    trainer = build_trainer(args, training_args, callbacks)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    output_dir = save_stage_output(trainer, args.stage)
    logger.info("saved %s; data: %s", output_dir, trainer.data_collator.stats.as_logs())
    return output_dir


def parse_args(argv: list[str]) -> tuple[MMMModalTrainArguments, TrainingArguments]:
    argv = [_shipped_deepspeed_config(item) for item in argv]
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        # Without it, each rank of a CPU torchrun silently trains alone (world size 1).
        argv += ["--use_cpu", "True"]
    parser = HfArgumentParser((MMMModalTrainArguments, TrainingArguments), prog="mmmmodal train")
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # a flag's value the arguments' own checks refuse: one line, not a traceback
        raise InputError(str(error)) from error


def _shipped_deepspeed_config(item: str) -> str:
    """`--deepspeed zero2_offload` (or zero3) names a config shipped with the package."""
    shipped = DEEPSPEED_CONFIGS / f"{item}.json"
    return str(shipped) if "/" not in item and shipped.exists() else item


def main(argv: list[str] | None = None) -> int:
    """`mmmmodal train` (the CLI has checked the transformers version before importing this module)."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    timeout = _flag_value(argv, "--ddp_timeout", 1800)
    distributed = init_cpu_distributed(int(timeout))
    try:
        args, training_args = parse_args(argv)
        print(f"saved {train(args, training_args)}")
    finally:
        if distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def _flag_value(argv: list[str], flag: str, default):
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return default
