"""Training the demo's LM from scratch on text, scoring only answer tokens: shared by the look-up benchmarks."""

import torch
from torch import nn


def padded(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) rows padded at the end to the longest; a causal LM never attends to the pads
    from the real tokens, and their labels are -100."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_token_id)
    labels = torch.full((len(rows), length), -100)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
    return input_ids, labels


def answer_loss_and_accuracy(model, input_ids, labels) -> tuple[torch.Tensor, float]:
    """Loss and token accuracy over answer tokens only; the 32k-word head over every position would
    dominate the step."""
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    answered = targets != -100
    logits = model.lm_head(hidden[answered])
    accuracy = (logits.argmax(-1) == targets[answered]).float().mean().item()
    return nn.functional.cross_entropy(logits, targets[answered]), accuracy


def adamw_with_warmup(model, fused: bool | None = None):
    """AdamW at 1e-3 without weight decay, its rate ramped up over the first 30 steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    return optimizer, schedule


def train_step(model, optimizer, schedule, input_ids, labels) -> None:
    loss, _ = answer_loss_and_accuracy(model, input_ids, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
