"""Real 2-process runs under torchrun (gloo, CPU): ranks that see different media never stall or diverge.

Rank 0 only ever sees image rows and rank 1 only audio rows (or text-only against mixed), with
activation checkpointing on: the setting in which DDP without `find_unused_parameters`, and
ZeRO-2, fail when a projector is missing from one rank's graph. Each test checks what really ran.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_parts import write_tiny_dataset

DRIVER = Path(__file__).parent / "distributed_driver.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_ranks(tmp_path, base_folder, kinds_per_rank, *extra, timeout=240):
    for rank, kinds in enumerate(kinds_per_rank):
        write_tiny_dataset(tmp_path / f"rank{rank}", rows=8, kinds=kinds, seed=rank)
    reports = tmp_path / "reports"
    reports.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(DRIVER),
        str(reports),
        "--",
        "--stage",
        "finetune",
        "--model",
        str(base_folder),
        "--data",
        str(tmp_path / "rank{rank}" / "data.jsonl"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--activation_checkpointing",
        "True",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--block_size",
        "512",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-5000:]
    found = sorted(reports.glob("report_rank*.json"))
    assert len(found) == 2, completed.stderr[-3000:]
    return [json.loads(path.read_text()) for path in found]


def assert_really_distributed(reports):
    for report in reports:
        assert report["world_size"] == 2 and report["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert report["gradient_checkpointing"] is True and report["steps"] == 3
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"], "ranks ended with different weights"
    assert reports[0]["weights_sha256"] != reports[0]["initial_weights_sha256"], "nothing was trained"


def test_ddp_image_rank_and_audio_rank(tmp_path, base_folder):
    reports = run_two_ranks(tmp_path, base_folder, [("image",), ("audio",)], "--ddp_find_unused_parameters", "False")
    assert_really_distributed(reports)
    assert all(r["wrapper"] == "DistributedDataParallel" and r["find_unused_parameters"] is False for r in reports)


def test_ddp_text_only_rank_and_mixed_rank(tmp_path, base_folder):
    reports = run_two_ranks(tmp_path, base_folder, [("text",), ("mixed",)], "--ddp_find_unused_parameters", "False")
    assert_really_distributed(reports)
    assert all(r["wrapper"] == "DistributedDataParallel" and r["find_unused_parameters"] is False for r in reports)


def test_ddp_grown_head_ranks_agree_on_the_rows_in_use(tmp_path, base_folder):
    """Ranks whose answers hold different tokens: a row one rank trains must be in use on every rank."""
    reports = run_two_ranks(tmp_path, base_folder, [("image",), ("audio",)], "--grow_head_from_targets", "True")
    assert_really_distributed(reports)
    assert reports[0]["head_rows_in_use"] == reports[1]["head_rows_in_use"]
    assert all(report["distinct_unused_rows_per_group"] == 1 for report in reports)


def test_deepspeed_zero2_offload_image_rank_and_audio_rank(tmp_path, base_folder):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [deepspeed] extra; CI installs it")
    # The shipped config, by name. The first run compiles DeepSpeed's CPU Adam (about 100 s); later runs reuse it.
    reports = run_two_ranks(
        tmp_path, base_folder, [("image",), ("audio",)], "--deepspeed", "zero2_offload", timeout=590
    )
    assert_really_distributed(reports)
    for report in reports:
        assert report["wrapper"] == "DeepSpeedEngine"
        assert report["zero_stage"] == 2 and report["offload_optimizer"] is True
