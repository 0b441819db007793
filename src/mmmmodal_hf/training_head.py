"""The LM head in training: computed only where a next token is to be predicted, and optionally on few rows.

With answer-only labels and a 32k vocabulary, the head over every position costs more than the
layers of a small model. `MMMModalTrainer.compute_loss` asks the model for logits at the labelled
positions alone, an explicit input of its forward (`logits_to_keep` as a boolean mask gives
`(num_labelled, vocab)` logits), so DDP and DeepSpeed see the head as part of the graph, and
`summed_loss` turns them into the loss the full computation gives.

`GroupedRowsHead` (`--grow_head_from_targets`): for a language model trained from scratch whose answers use
few of its tokens (the demo's: the 32k Mistral tokenizer, under 200 tokens in its answers). The
vocabulary is cut into `groups` runs of consecutive tokens, and the rows of a run that no target has
reached are made equal (to its first row). Equal rows have equal logits, so the softmax gives them
equal gradients and they stay equal: one column, their row's logit plus log(how many), stands for
them all. The loss and every row's gradient are those of the head over the whole vocabulary; only
the start differs, so a pretrained head would lose what it knew.
"""

import torch
from torch import nn


class GroupedRowsHead(nn.Linear):
    """`--grow_head_from_targets`' head, put in the model's place of `head` (`set_output_embeddings`) and sharing its
    weight (a tied embedding stays tied; saved folders hold the same `lm_head.weight`). In training its logits are the
    rows in use and one column per group of the rest; in evaluation and generation, every row's."""

    def __init__(self, head: nn.Linear, rows_in_use=None, groups: int | None = None):
        if head.bias is not None:
            raise ValueError("--grow_head_from_targets needs an LM head without bias")
        super().__init__(head.in_features, head.out_features, bias=False, device="meta")
        self.weight = head.weight
        vocab_size, device = self.weight.shape[0], self.weight.device
        groups = min(1024, vocab_size) if groups is None else groups  # 1024 learned as fast as 32k in the demo
        if not 1 <= groups <= vocab_size:
            raise ValueError(f"groups must be between 1 and the vocabulary size {vocab_size}; got {groups}")
        in_use = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if rows_in_use is not None:
            in_use[torch.as_tensor(rows_in_use, dtype=torch.long, device=device)] = True
        self.row_groups = torch.arange(vocab_size, device=device) * groups // vocab_size
        first_of_group = torch.searchsorted(self.row_groups, torch.arange(groups, device=device))
        with torch.no_grad():  # each group's rows that no known target holds: equal to the group's first row
            self.weight[~in_use] = self.weight[first_of_group[self.row_groups[~in_use]]]
        self.rows_in_use = in_use

    def mark_in_use(self, targets: torch.Tensor) -> None:
        """Give `targets`' rows their own columns from now on (before the step whose targets they are)."""
        in_use = self.rows_in_use.to(targets.device)
        in_use[targets] = True
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must agree on the rows in use: a row one rank trains no longer equals its group's.
            shared = in_use.to(torch.int32)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            in_use = shared.bool()
        self.rows_in_use = in_use

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._grown_logits(hidden_states) if self.training else super().forward(hidden_states)

    def _grown_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the rows in use, then one column per group of the rest (its row's logit + log(count))."""
        in_use, weight = self.rows_in_use, self.weight
        group = self.row_groups = self.row_groups.to(in_use.device)
        groups = int(group[-1]) + 1
        rows, unused = in_use.nonzero().squeeze(1), (~in_use).nonzero().squeeze(1)
        members = torch.bincount(group[unused], minlength=groups)
        # Each group's unused rows are equal: the first of them is the group's row, exactly in any dtype.
        # Their mean's gradient, spread evenly over them, is what each would get on its own.
        first = torch.zeros(groups, dtype=torch.long, device=unused.device)
        first = first.scatter_reduce(0, group[unused], unused, reduce="amin", include_self=False)
        sums = weight.new_zeros(groups, weight.shape[1]).index_add(0, group, weight)
        sums = sums - weight.new_zeros(groups, weight.shape[1]).index_add(0, group[rows], weight[rows])
        mean = sums / members.clamp(min=1).unsqueeze(1).to(sums.dtype)
        shared_rows = weight[first].detach() + (mean - mean.detach())
        logits = nn.functional.linear(hidden_states, torch.cat([weight[rows], shared_rows])).float()
        logits[:, rows.numel() :] += members.float().log()  # log(0) = -inf: a group wholly in use adds nothing
        return logits


class RowsLearningHead(nn.Linear):
    """A head tied to the input embedding, in `align`: it shares the weight, and its gradient reaches only `rows` of
    it, as the embedding's lookups reach only those (`trainable_token_ids`); every other row stays as it was."""

    def __init__(self, head: nn.Linear, rows: torch.Tensor):
        super().__init__(head.in_features, head.out_features, bias=False, device="meta")
        self.weight, self.bias = head.weight, head.bias
        self.learns = torch.zeros(self.weight.shape[0], 1, dtype=torch.bool)
        self.learns[rows] = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        learns = self.learns.to(self.weight.device)
        return nn.functional.linear(hidden_states, torch.where(learns, self.weight, self.weight.detach()), self.bias)


def summed_loss(head: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `targets` (vocabulary ids) for the logits `head` gave at the labelled positions."""
    if isinstance(head, GroupedRowsHead) and head.training:
        targets = torch.searchsorted(head.rows_in_use.to(targets.device).nonzero().squeeze(1), targets)
    return nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
