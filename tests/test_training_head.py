"""The LM head in training (`training_head`): the full loss at labelled positions only, and on few rows."""

import copy

import pytest
import torch

from mmmmodal_hf.training_head import GroupedRowsHead, summed_loss

from tiny_parts import random_clip, random_image


def labelled_text_and_audio(processor):
    """A batch of two rows, right-padded, with labels on all but their first eight tokens."""
    inputs = processor(
        text=["<image> Apa ini? Kucing comel.", "<audio> What is it? A dog barking loudly."],
        images=[[random_image(0)], []],
        audio=[[], [random_clip(1)]],
        padding_side="right",
        return_tensors="pt",
    )
    labels = inputs["input_ids"].clone()
    labels[:, :8] = -100
    labels[inputs["attention_mask"] == 0] = -100
    return inputs, labels


def head_loss(model, inputs, labels, grouped_head=None):
    """What `MMMModalTrainer.compute_loss` does: logits at labelled positions (a `logits_to_keep` mask), summed loss
    over their count."""
    targets = labels[:, 1:]
    labelled = targets != -100
    if grouped_head is not None:
        grouped_head.mark_in_use(targets[labelled])
    logits = model(**inputs, logits_to_keep=torch.nn.functional.pad(labelled, (0, 1))).logits
    return logits, summed_loss(grouped_head, logits, targets[labelled]) / labelled.sum()


def test_the_head_at_labelled_positions_gives_the_full_loss(model, session_processor):
    inputs, labels = labelled_text_and_audio(session_processor)
    model = copy.deepcopy(model)
    with torch.no_grad():
        full = model(**inputs, labels=labels)
        logits, loss = head_loss(model, inputs, labels)
        with pytest.raises(ValueError, match="compute the loss"):  # the mask's logits are no (batch, sequence) grid
            model(**inputs, labels=labels, logits_to_keep=labels != -100)
    labelled = int((labels[:, 1:] != -100).sum())
    assert logits.shape == (labelled, model.config.text_config.vocab_size)
    torch.testing.assert_close(loss, full.loss, atol=1e-5, rtol=1e-5)


def assert_groups_share_one_row(head):
    """Within each group, the head rows no target has reached are one and the same row."""
    weight, unused = head.weight.detach(), ~head.rows_in_use
    for group in head.row_groups.unique():
        rows = weight[unused & (head.row_groups == group)]
        assert torch.equal(rows, rows[:1].expand_as(rows)), int(group)


def test_the_grown_head_gives_the_loss_and_gradients_of_the_whole_vocabulary(model, session_processor):
    """`--grow_head_from_targets`: a group's rows that no target has reached stand as one column."""
    inputs, labels = labelled_text_and_audio(session_processor)
    targets = labels[:, 1:][labels[:, 1:] != -100].unique()
    grown_model = copy.deepcopy(model).train()
    # As after some training: rows reached by earlier targets hold their own values.
    earlier = torch.cat([targets[::2], torch.tensor([5, 6])]).unique()
    grown = GroupedRowsHead(grown_model.lm_head, rows_in_use=earlier, groups=4)
    grown_model.set_output_embeddings(grown)
    assert grown.weight is grown_model.get_output_embeddings().weight
    assert_groups_share_one_row(grown)
    assert len(grown_model.lm_head.weight[~grown.rows_in_use].unique(dim=0)) == 4
    whole_model = copy.deepcopy(grown_model)  # the same (grown) weights, the head over the whole vocabulary
    plain = torch.nn.Linear(grown.in_features, grown.out_features, bias=False)
    plain.weight = whole_model.lm_head.weight
    whole_model.set_output_embeddings(plain)

    logits, loss = head_loss(grown_model, inputs, labels, grown)
    _, reference = head_loss(whole_model, inputs, labels)
    loss.backward(), reference.backward()
    assert logits.shape[1] < grown_model.config.text_config.vocab_size  # rows in use + one per group
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for (name, parameter), (_, expected) in zip(
        grown_model.named_parameters(), whole_model.named_parameters(), strict=True
    ):
        if expected.grad is not None:
            scale = float(expected.grad.abs().max())  # float sums in another order: ~1e-5 of the largest entry
            torch.testing.assert_close(parameter.grad, expected.grad, atol=1e-4 * scale + 1e-7, rtol=1e-3, msg=name)
    assert set(grown.rows_in_use.nonzero().squeeze(1).tolist()) == set(earlier.tolist()) | set(targets.tolist())

    # A group's rows not in use get equal gradients, so an optimizer step keeps them one row.
    torch.optim.AdamW(grown_model.parameters(), lr=1e-2, weight_decay=0.1).step()
    assert_groups_share_one_row(grown)
    # In evaluation and generation the head is the whole head over every row.
    grown.eval()
    hidden = torch.randn(3, grown.in_features)
    torch.testing.assert_close(grown(hidden), torch.nn.functional.linear(hidden, grown.weight))


def test_the_grown_head_refuses_more_groups_than_tokens(model):
    head = copy.deepcopy(model.lm_head)
    with pytest.raises(ValueError, match="groups must be between 1 and the vocabulary size"):
        GroupedRowsHead(head, groups=model.config.text_config.vocab_size + 1)
