"""Training stages through `Trainer`: what trains in each stage, resume, LoRA export, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mmmmodal_hf import MMMModalForConditionalGeneration
from mmmmodal_hf.cli_errors import InputError, first_line
from mmmmodal_hf.data import LengthGroupedBatchSampler
from mmmmodal_hf.training import DEEPSPEED_CONFIGS, build_trainer, parse_args, save_stage_output, train

from fresh_process import fresh_process_chat, load_in_fresh_process, write_fresh_process_media
from tiny_parts import package_patches, tiny_config, tiny_model, tiny_text_config, write_tiny_dataset


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"), rows=8)


def run_stage(stage, base_folder, data_file, output_dir, *extra, callbacks=()):
    args, training_args = parse_args(
        [
            "--stage",
            stage,
            "--model",
            str(base_folder),
            "--data",
            str(data_file),
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-2",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--block_size",
            "512",
            "--seed",
            "0",
            *extra,
        ]
    )
    return train(args, training_args, callbacks)


def changed_weights(before_folder, after_folder):
    before = load_file(before_folder / "model.safetensors")
    after = load_file(after_folder / "model.safetensors")
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}, before, after


def test_align_trains_only_projectors_and_tag_rows(base_folder, data_file, tmp_path, session_processor):
    output = run_stage("align", base_folder, data_file, tmp_path / "align", "--weight_decay", "0.1")
    changed, before, after = changed_weights(base_folder, output)
    embeddings = "model.language_model.embed_tokens.weight"
    projectors = {name for name in before if "_projector." in name}
    assert changed == projectors | {embeddings}
    rows = (before[embeddings] != after[embeddings]).any(-1).nonzero().flatten().tolist()
    tags = [
        session_processor.image_start_token_id,
        session_processor.image_end_token_id,
        session_processor.audio_start_token_id,
        session_processor.audio_end_token_id,
    ]
    assert rows == sorted(tags)


class Inspect(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.patches = package_patches(model)


@pytest.mark.parametrize("stage, extra", [("align", ()), ("finetune", ("--remember_tower_outputs", "64"))])
def test_a_training_run_leaves_no_hooks_or_patches(base_folder, data_file, tmp_path, stage, extra):
    """What training needs reaches the model as explicit inputs and subclasses, never as hooks on its parts."""
    inspect = Inspect()
    run_stage(stage, base_folder, data_file, tmp_path / stage, *extra, callbacks=[inspect])
    assert inspect.patches == []


def test_align_on_a_tied_head_trains_only_the_tag_rows(data_file, tmp_path, session_processor):
    """The head shares the embedding: neither its lookups nor the head's gradient reach any row but the tags'."""
    base = tmp_path / "tied"
    text_config = tiny_text_config(len(session_processor.tokenizer))
    text_config.tie_word_embeddings = True
    torch.manual_seed(0)
    MMMModalForConditionalGeneration(
        tiny_config(session_processor, text_config=text_config, tie_word_embeddings=True)
    ).save_pretrained(base)
    session_processor.save_pretrained(base)
    output = run_stage("align", base, data_file, tmp_path / "align", "--weight_decay", "0.1")
    changed, before, after = changed_weights(base, output)
    embeddings = "model.language_model.embed_tokens.weight"
    assert changed == {name for name in before if "_projector." in name} | {embeddings}
    rows = (before[embeddings] != after[embeddings]).any(-1).nonzero().flatten().tolist()
    assert rows == sorted(session_processor.special_token_ids[f"{kind}_token_id"] for kind in TAGS)
    model = MMMModalForConditionalGeneration.from_pretrained(output)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


TAGS = ("image_start", "image_end", "audio_start", "audio_end")


def test_align_one_modality_at_a_time(base_folder, data_file, tmp_path):
    output = run_stage("align", base_folder, data_file, tmp_path / "align_image", "--align_modalities", "image")
    changed, _, _ = changed_weights(base_folder, output)
    assert any(name.startswith("model.image_projector.") for name in changed)
    assert not any(name.startswith("model.audio_projector.") for name in changed)


def test_finetune_trains_language_model_and_projectors_not_encoders(base_folder, data_file, tmp_path):
    output = run_stage("finetune", base_folder, data_file, tmp_path / "finetune", "--activation_checkpointing", "True")
    changed, before, _ = changed_weights(base_folder, output)
    assert not [n for n in changed if n.startswith(("model.vision_tower.", "model.audio_tower."))]
    language_model = {n for n in before if n.startswith("model.language_model.layers.")}
    assert language_model <= changed and "lm_head.weight" in changed
    assert {n for n in before if "_projector." in n} <= changed


def test_the_demos_previous_token_map_trains_in_finetune_not_in_align(data_file, tmp_path, session_processor):
    """A model that adds to the published one (the demo's) trains through its own folder's code, which travels."""
    from mmmmodal_hf.demo.remote_code import write_demo_code

    base = tmp_path / "base"
    tiny_model(session_processor, previous_token_mix=1).save_pretrained(base)
    session_processor.save_pretrained(base)
    write_demo_code(base)
    aligned = run_stage("align", base, data_file, tmp_path / "align")
    assert "model.previous_token_mix.weight" not in changed_weights(base, aligned)[0]
    finetuned = run_stage("finetune", base, data_file, tmp_path / "finetune")
    assert "model.previous_token_mix.weight" in changed_weights(base, finetuned)[0]
    assert (finetuned / "modeling_mmmmodal_demo.py").is_file() and (finetuned / "modeling_mmmmodal.py").is_file()


def test_resume_reaches_the_same_weights(base_folder, data_file, tmp_path):
    common = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    straight = run_stage("finetune", base_folder, data_file, tmp_path / "straight", *common)
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    resumed = run_stage(
        "finetune", base_folder, data_file, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint)
    )
    changed, _, _ = changed_weights(straight, resumed)
    assert changed == set()
    early, _, _ = changed_weights(checkpoint, straight)
    assert early, "the last two steps should have changed the weights"


def test_lora_trains_merges_and_reloads_through_auto_model(base_folder, data_file, tmp_path):
    merged = run_stage("lora", base_folder, data_file, tmp_path / "lora", "--lora_r", "4")
    assert merged.name == "merged" and (merged / "modeling_mmmmodal.py").exists()
    changed, before, after = changed_weights(base_folder, merged)
    assert set(before) == set(after), "the merged folder has the plain layout, no adapter weights"
    assert any(".self_attn.q_proj." in n for n in changed) and any("_projector." in n for n in changed)
    assert not [n for n in changed if n.startswith(("model.vision_tower.", "model.audio_tower."))]
    results = load_in_fresh_process(merged, write_fresh_process_media(tmp_path))
    model = MMMModalForConditionalGeneration.from_pretrained(merged).eval()
    from mmmmodal_hf import MMMModalProcessor

    processor = MMMModalProcessor.from_pretrained(merged)
    inputs = processor.apply_chat_template(
        fresh_process_chat(tmp_path), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(results["auto_model_logits"], model(**inputs).logits)


def test_lora_runs_with_one_seed_reach_the_same_weights(base_folder, data_file, tmp_path):
    """The adapters are initialised from `--seed`, not from whatever the process drew before."""
    first = run_stage("lora", base_folder, data_file, tmp_path / "first")
    torch.rand(7)  # the global generator moves on between the runs
    second = run_stage("lora", base_folder, data_file, tmp_path / "second")
    changed, _, _ = changed_weights(first, second)
    assert changed == set()


def test_train_command_runs_a_stage(base_folder, data_file, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "train",
            "--stage",
            "align",
            "--model",
            str(base_folder),
            "--data",
            str(data_file),
            "--output_dir",
            str(tmp_path / "cli"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
            "--block_size",
            "512",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "cli" / "model.safetensors").exists() and (tmp_path / "cli" / "processor_config.json").exists()
    assert "data/skipped_rows" in completed.stderr + completed.stdout
    # bitsandbytes' import-time notice of a 4-bit CPU kernel (AVX512-BF16 CPUs) concerns no training command.
    assert "gemm_4bit" not in completed.stderr and "quantization-bitsandbytes" not in completed.stderr


@pytest.mark.parametrize("stage", ["align", "finetune", "lora"])
def test_what_a_stage_writes_can_be_published(stage, base_folder, data_file, tmp_path, capsys):
    """`mmmmodal push --dry-run` takes each stage's folder as it is: no pickles, a model card, it loads (in a fresh
    process, push's own check)."""
    from huggingface_hub import ModelCard

    from mmmmodal_hf.conversion.push import main as push

    output = run_stage(
        stage, base_folder, data_file, tmp_path / stage, "--save_strategy", "steps", "--save_steps", "2"
    )
    capsys.readouterr()
    assert push([str(output), "--repo-id", "someone/tiny", "--dry-run"]) == 0  # the command's main, here
    listed = json.loads(capsys.readouterr().out.splitlines()[1])
    assert "README.md" in listed and "model.safetensors" in listed
    assert not [name for name in listed if name.endswith((".bin", ".pt", ".pth")) or "checkpoint-" in name]
    # Trainer's own state stays in the run's checkpoints.
    assert (tmp_path / stage / "checkpoint-2" / "training_args.bin").exists()
    card = ModelCard.load(output / "README.md")
    assert f"--stage {stage}" in card.text and "3 steps" in card.text
    trained = {"align": "image projector, audio projector, language model", "finetune": "LM head"}
    assert trained.get(stage, "projector") in card.text


def test_finetune_packs_a_default_block_on_a_language_model_of_shorter_context(base_folder, data_file, tmp_path):
    """The published block (8192) on an LM of 1024 positions: padding-free rows, no padding tail."""
    assert json.loads((base_folder / "config.json").read_text())["text_config"]["max_position_embeddings"] == 1024
    logged = []

    class KeepLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    args, training_args = parse_args(
        [
            *("--stage", "finetune", "--model", str(base_folder), "--data", str(data_file)),
            *("--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "4"),
            *("--logging_steps", "1", "--report_to", "none", "--save_strategy", "no"),
        ]
    )
    assert (args.packing, args.block_size) == (True, 8192)
    train(args, training_args, callbacks=[KeepLogs()])
    padding = [logs["data/padding_fraction"] for logs in logged if "data/padding_fraction" in logs]
    assert len(padding) >= 4 and max(padding) < 0.01, padding


def test_bad_stage_is_refused():
    with pytest.raises(ValueError, match="--stage must be one of"):
        parse_args(["--stage", "pretrain", "--model", "m", "--data", "d", "--output_dir", "o"])


@pytest.mark.parametrize("name", ["zero2_offload.json", "zero3.json"])
def test_shipped_deepspeed_configs_pass_transformers_checks(name, session_processor, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [deepspeed] extra; CI installs it")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    config = json.loads((DEEPSPEED_CONFIGS / name).read_text())
    assert config["bf16"]["enabled"] == "auto", "a bf16 block (the published config lacked one)"
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=2e-5,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=True,
        use_cpu=True,
        report_to="none",
    )
    model = MMMModalForConditionalGeneration(tiny_config(session_processor))  # before: ZeRO-3 would partition it
    ds_config = HfTrainerDeepSpeedConfig(config)
    try:
        ds_config.trainer_config_process(args)
        ds_config.trainer_config_finalize(args, model, num_training_steps=10)  # raises on any mismatch
    finally:
        unset_hf_deepspeed_config()
    resolved = ds_config.config
    assert resolved["train_micro_batch_size_per_gpu"] == 2 and resolved["gradient_accumulation_steps"] == 4
    assert resolved["optimizer"]["params"]["lr"] == 2e-5 and resolved["bf16"]["enabled"] is True
    expected_stage = 2 if name.startswith("zero2") else 3
    assert resolved["zero_optimization"]["stage"] == expected_stage
    if expected_stage == 2:
        assert resolved["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_runs_of_different_bases_are_refused_by_name(base_folder, session_processor, tmp_path):
    """Found: `mmmmodal align-combine` of runs from two bases ended in a traceback, and in a KeyError where one base
    had more layers; it names the first part that differs."""
    from mmmmodal_hf.training import combine_alignments

    deeper_text = tiny_text_config(len(session_processor.tokenizer), num_hidden_layers=3)
    for name, config, part in (("other", tiny_config(session_processor), "vision_tower"),
                               ("deeper", tiny_config(session_processor, text_config=deeper_text), "language_model")):  # fmt: skip
        torch.manual_seed(1 if name == "other" else 0)
        MMMModalForConditionalGeneration(config).save_pretrained(tmp_path / name)
        session_processor.save_pretrained(tmp_path / name)
        with pytest.raises(
            InputError, match=rf"^{base_folder} and {tmp_path / name} do not share a base: their {part}"
        ):
            combine_alignments(base_folder, tmp_path / name, tmp_path / f"{name}_both")
        assert not (tmp_path / f"{name}_both").exists()


def test_separate_image_and_audio_alignments_combine(base_folder, data_file, tmp_path, session_processor):
    image_run = run_stage("align", base_folder, data_file, tmp_path / "image", "--align_modalities", "image")
    audio_run = run_stage("align", base_folder, data_file, tmp_path / "audio", "--align_modalities", "audio")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmmmodal_hf.cli",
            "align-combine",
            str(image_run),
            str(audio_run),
            str(tmp_path / "both"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    both = load_file(tmp_path / "both" / "model.safetensors")
    image, audio = load_file(image_run / "model.safetensors"), load_file(audio_run / "model.safetensors")
    for name in both:
        source = audio if name.startswith("model.audio_projector.") else image
        if name != "model.language_model.embed_tokens.weight":
            assert torch.equal(both[name], source[name]), name
    embeddings = "model.language_model.embed_tokens.weight"
    audio_rows = [session_processor.audio_start_token_id, session_processor.audio_end_token_id]
    image_rows = [session_processor.image_start_token_id, session_processor.image_end_token_id]
    assert torch.equal(both[embeddings][audio_rows], audio[embeddings][audio_rows])
    assert torch.equal(both[embeddings][image_rows], image[embeddings][image_rows])
    assert not torch.equal(image[embeddings][audio_rows], audio[embeddings][audio_rows])


def test_streaming_data_and_bf16(base_folder, data_file, tmp_path):
    output = run_stage("align", base_folder, data_file, tmp_path / "stream", "--streaming", "True", "--bf16", "True")
    changed, _, _ = changed_weights(base_folder, output)
    assert any("_projector." in name for name in changed)


class DeleteMediaAfterFirstEpoch(TrainerCallback):
    """After epoch 1 the media files are gone: only rows kept in memory can still be served."""

    def __init__(self, folder):
        self.folder = folder

    def on_epoch_end(self, args, state, control, **kwargs):
        for path in self.folder.iterdir():
            if path.suffix in (".png", ".wav"):
                path.unlink()


@pytest.mark.parametrize("cache_rows", [True, False])
def test_cached_rows_serve_later_epochs_without_touching_the_files(base_folder, tmp_path, cache_rows):
    folder = tmp_path / "data"
    data = write_tiny_dataset(folder, rows=4, kinds=("image", "audio", "mixed"))
    args, training_args = parse_args(
        [
            *("--stage", "finetune", "--model", str(base_folder), "--data", str(data)),
            *("--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "2"),
            *("--report_to", "none", "--save_strategy", "no", "--block_size", "512", "--seed", "0"),
            *("--dataloader_num_workers", "1", "--dataloader_persistent_workers", "True"),
            *("--cache_rows", str(cache_rows)),
        ]
    )
    callbacks = [DeleteMediaAfterFirstEpoch(folder)]
    if cache_rows:
        output = train(args, training_args, callbacks)  # 2 epochs of 2 steps; the second from memory
        assert not list(folder.glob("*.png")) and (output / "model.safetensors").exists()
    else:
        with pytest.raises(InputError, match="none of the 4 rows can be used") as refused:  # raised in the worker
            train(args, training_args, callbacks)
        assert first_line(refused.value).startswith("none of the 4 rows can be used (the first refused: row ")


def test_cached_rows_refuse_streaming():
    with pytest.raises(ValueError, match="does not combine with --streaming"):
        parse_args(
            ["--stage", "finetune", "--model", "m", "--data", "d", "--output_dir", "o"]
            + ["--streaming", "True", "--cache_rows", "True"]
        )


def test_length_grouped_batches_measure_rows_without_encoding_them(base_folder, tmp_path):
    """`--train_sampling_strategy group_by_length`: every row's length comes from its text and media
    counts, so no row is encoded before it is served; with `cache_rows` each is encoded once."""
    data = write_tiny_dataset(tmp_path / "data", rows=12, kinds=("image", "audio", "mixed"))
    args, training_args = parse_args(
        [
            *("--stage", "finetune", "--model", str(base_folder), "--data", str(data)),
            *("--output_dir", str(tmp_path / "out"), "--max_steps", "12", "--per_device_train_batch_size", "2"),
            *("--report_to", "none", "--save_strategy", "no", "--block_size", "512", "--seed", "0"),
            *("--train_sampling_strategy", "group_by_length", "--cache_rows", "True", "--packing", "False"),
        ]
    )
    trainer = build_trainer(args, training_args)
    dataset = trainer.train_dataset
    assert isinstance(trainer._get_train_sampler(), LengthGroupedBatchSampler)
    assert len(dataset.lengths()) == 12 and dataset.stats.rows == 0  # measured, nothing encoded
    batches = list(trainer.get_train_dataloader())  # one epoch, through the length-grouped sampler
    assert dataset.stats.rows == 12 and [len(b["input_ids"]) for b in batches] == [2] * 6
    trainer.train()  # two epochs of six steps, from memory
    assert dataset.stats.rows == 12 and trainer.state.global_step == 12


@pytest.mark.parametrize("stage", ["finetune", "lora"])
def test_remembered_tower_outputs_train_to_the_same_weights(base_folder, tmp_path, stage):
    """`--remember_tower_outputs`: frozen towers run once per medium, and the trained weights are those of a plain run."""
    data = write_tiny_dataset(tmp_path / "data", rows=4, kinds=("image", "audio", "mixed"))
    # Two epochs: the second from memory. On the CPU, as a GPU's kernels round a medium's tower output
    # differently in batches of other shapes, and Adam turns such differences into whole steps.
    common = ["--max_steps", "4", "--per_device_train_batch_size", "2", "--use_cpu", "True"]
    plain = run_stage(stage, base_folder, data, tmp_path / "plain", *common)
    args, training_args = parse_args(
        [*("--stage", stage, "--model", str(base_folder), "--data", str(data), "--output_dir", str(tmp_path / "memo")),
         *("--learning_rate", "1e-2", "--report_to", "none", "--save_strategy", "no", "--block_size", "512"),
         *("--seed", "0", *common, "--remember_tower_outputs", "64")]
    )  # fmt: skip
    trainer = build_trainer(args, training_args)
    trainer.train()
    remembered = save_stage_output(trainer, stage)
    counts = {name: len(memo.outputs) for name, memo in trainer.remembered_towers.memos.items()}
    files = {name for line in data.read_text().splitlines() for name in json.loads(line)["filename"]}
    assert counts["vision"] + counts["audio"] == len(files) > 0
    before, after = load_file(plain / "model.safetensors"), load_file(remembered / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-5), name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--remember_tower_outputs", "-1"], "takes a number of media"),
        (["--remember_tower_outputs", "8", "--train_encoders", "True"], "needs frozen towers"),
        (["--grow_head_from_targets", "True", "--stage", "align"], "is for the finetune stage; got --stage align"),
        (["--grow_head_from_targets", "True", "--stage", "lora"], "is for the finetune stage; got --stage lora"),
    ],
)
def test_training_options_refuse_what_they_cannot_serve(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--stage", "finetune", "--model", "m", "--data", "d", "--output_dir", "o", *extra])


@pytest.mark.parametrize(
    "option",
    [
        # A rank that found its media remembered would skip the weight gather its peers wait in.
        ("--remember_tower_outputs", "8"),
        # The grown head reads rows of the head's weight outside its forward, where a shard is all there is.
        ("--grow_head_from_targets", "True"),
    ],
)
def test_options_that_read_whole_weights_refuse_sharded_training(base_folder, data_file, tmp_path, option):
    args, training_args = parse_args(
        [
            *("--stage", "finetune", "--model", str(base_folder), "--data", str(data_file)),
            *("--output_dir", str(tmp_path), "--report_to", "none", *option),
            *("--fsdp", "full_shard"),
        ]
    )
    with pytest.raises(ValueError, match="does not combine with DeepSpeed ZeRO-3 or FSDP"):
        build_trainer(args, training_args)


def test_grown_head_starts_the_answers_rows_apart_and_trains_every_target_row(base_folder, data_file, tmp_path):
    """`--grow_head_from_targets`: the answers' tokens are read ahead, and every label's row is in use after training."""
    args, training_args = parse_args(
        [
            *("--stage", "finetune", "--model", str(base_folder), "--data", str(data_file)),
            *("--output_dir", str(tmp_path), "--report_to", "none", "--save_strategy", "no"),
            *("--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2"),
            *("--grow_head_from_targets", "True", "--use_cpu", "True", "--block_size", "512"),
        ]
    )
    trainer = build_trainer(args, training_args)
    model, head, tokenizer = trainer.model, trainer.grouped_head, trainer.processing_class.tokenizer
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    answers = [m["content"] for row in rows for m in row["conversations"] if m["role"] == "assistant"]
    read_ahead = set(head.rows_in_use.nonzero().squeeze(1).tolist())
    assert read_ahead == {t for ids in tokenizer(answers, add_special_tokens=False)["input_ids"] for t in ids} | {
        tokenizer.eos_token_id
    }
    before = model.lm_head.weight.detach().clone()
    assert len(before[head.rows_in_use].unique(dim=0)) == len(read_ahead)  # each its own start
    targets = set()
    for row in trainer.train_dataset:
        labels = torch.as_tensor(row["labels"])[1:]
        targets |= set(labels[labels != -100].tolist())

    trainer.train()
    in_use = head.rows_in_use
    assert set(in_use.nonzero().squeeze(1).tolist()) == read_ahead | targets
    head = model.lm_head.weight.detach()
    assert not torch.equal(head[in_use], before[in_use])
    for group in trainer.grouped_head.row_groups.unique():
        shared = head[~in_use & (trainer.grouped_head.row_groups == group)]
        assert torch.equal(shared, shared[:1].expand_as(shared)), int(group)


def cut_in_half(data_file: Path, line_number: int, folder: Path) -> Path:
    """A copy of `data_file` (beside the same media) whose line `line_number` ends halfway, and a blank line after it."""
    lines = data_file.read_text().splitlines()
    lines[line_number - 1] = lines[line_number - 1][: len(lines[line_number - 1]) // 2]
    lines.insert(line_number, "")
    cut = folder / "cut.jsonl"
    cut.write_text("\n".join(lines) + "\n")
    return cut


@pytest.mark.parametrize("streaming", ["False", "True"])
def test_a_line_cut_in_half_is_skipped_by_name_and_training_goes_on(streaming, base_folder, data_file, tmp_path):
    """Found: pyarrow's "JSON parse error ... in row 9" (counted from 0) stopped `mmmmodal train` before step 0."""
    cut = cut_in_half(data_file, 3, data_file.parent)
    completed = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "train", "--stage", "align", "--model", str(base_folder),
         "--data", str(cut), "--output_dir", str(tmp_path / "run"), "--max_steps", "4",
         "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
         "--block_size", "512", "--streaming", streaming],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert "skipping row cut.jsonl:3: not valid JSON (Unterminated string starting at: column" in completed.stderr, (
        completed.stderr[-3000:]
    )
    assert "cut.jsonl:4" not in completed.stderr  # the blank line after it keeps every later line's number
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_streamed_rows_with_several_images_each_keep_every_image(base_folder, tmp_path):
    """Found with the demo's data: streamed training stopped at step 1 with 'The input holds 12 image slot tokens but
    the image encoder produced 4 features' (accelerate cut the batch's `pixel_values`, a row per image, to the batch
    size). Rows of three images each, streamed two to a batch, train."""
    import json

    from tiny_parts import random_image

    rows = []
    for index in range(4):
        names = [f"img_{index}_{k}.png" for k in range(3)]
        for seed, name in enumerate(names):
            random_image(10 * index + seed).save(tmp_path / name)
        rows.append({
            "conversations": [{"role": "user", "content": "<image> </image> <image> </image> <image> </image> Apa?"},
                              {"role": "assistant", "content": f"Tiga gambar {index}."}],
            "filename": names,
        })  # fmt: skip
    data = tmp_path / "three_images.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = run_stage(
        "finetune", base_folder, data, tmp_path / "run", "--streaming", "True", "--per_device_train_batch_size", "2"
    )
    assert (output / "model.safetensors").exists()


def test_the_training_docs_python_example_runs_as_written(base_folder, data_file, tmp_path):
    """docs/training.md's "From Python" block, run in a fresh process with the folder and data swapped in: it trains,
    and the folder it prints loads as the stage's output."""
    section = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text().split("## From Python")[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"runs/align"' in code and '"data/chat/"' in code
    code = code.replace('"runs/align"', repr(str(base_folder))).replace('"data/chat/"', repr(str(data_file)))
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = tmp_path / completed.stdout.strip().splitlines()[-1]  # relative, as `output_dir` was given
    assert output == tmp_path / "runs" / "finetune"
    changed, _, _ = changed_weights(base_folder, output)
    assert any(name.startswith("model.language_model.") for name in changed)
    assert not any("_tower." in name for name in changed)  # finetune keeps the encoders frozen
    assert MMMModalForConditionalGeneration.from_pretrained(output).config.model_type == "mmmmodal"


def test_data_that_is_not_there_is_named_before_the_model_loads(base_folder, tmp_path):
    """Found: the model was loaded first (minutes for a 7B one) and a mistyped `--data` named after it. A folder
    whose weights cannot load shows the order: the data's error comes first."""
    import shutil

    folder = shutil.copytree(base_folder, tmp_path / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    args, training_args = parse_args(
        ["--stage", "finetune", "--model", str(folder), "--data", str(tmp_path / "chat.jsonl"),
         "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no data at .*chat.jsonl"):
        build_trainer(args, training_args)
