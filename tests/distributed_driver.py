"""Run by `torchrun` in the distributed tests: one training stage, then a report of what really ran.

Each rank reads its own data file (`data_rank{RANK}.jsonl`), so a test can give rank 0 only
image rows and rank 1 only audio rows. Usage: distributed_driver.py REPORT_DIR -- <mmmmodal train flags>
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist

from mmmmodal_hf.training import build_trainer, init_cpu_distributed, parse_args, save_stage_output


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    report_dir, flags = sys.argv[1], sys.argv[3:]
    rank = int(os.environ["RANK"])
    flags = [flag.replace("{rank}", str(rank)) for flag in flags]
    init_cpu_distributed(120)
    args, training_args = parse_args(flags)
    trainer = build_trainer(args, training_args)
    initial = weights_digest(trainer.model)
    trainer.train()
    save_stage_output(trainer, args.stage)

    wrapped = trainer.model_wrapped
    report = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "parallel_mode": str(training_args.parallel_mode),
        "wrapper": type(wrapped).__name__,
        "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
        "gradient_checkpointing": trainer.model.is_activation_checkpointing,
        "steps": trainer.state.global_step,
        "rows_encoded": trainer.data_collator.stats.rows,
    }
    if type(wrapped).__name__ == "DeepSpeedEngine":
        report["zero_stage"] = wrapped.zero_optimization_stage()
        report["offload_optimizer"] = wrapped.zero_cpu_offload()
    model = trainer.model
    if trainer.grouped_head is not None:  # --grow_head_from_targets
        in_use, groups = trainer.grouped_head.rows_in_use.cpu(), trainer.grouped_head.row_groups.cpu()
        head = model.lm_head.weight.detach().cpu()
        report["head_rows_in_use"] = in_use.nonzero().squeeze(1).tolist()
        # Each group's rows no target has reached must still be one row: 1 here, on every rank.
        report["distinct_unused_rows_per_group"] = max(
            len(head[~in_use & (groups == group)].unique(dim=0)) for group in groups.unique()
        )
    report["initial_weights_sha256"] = initial
    report["weights_sha256"] = weights_digest(trainer.model)
    with open(os.path.join(report_dir, f"report_rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
