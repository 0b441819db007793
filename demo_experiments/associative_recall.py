"""A warm-up on associative recall (MQAR): does a ready-made look-up circuit speed the world's questions?

Small transformers learn "find the earlier match, copy its neighbour" (induction heads) fastest on
dense synthetic recall. Each sequence lists 4-8 random key-value pairs from a pool of 100 tokens,
then asks 12 of them: a key to be followed by its value (forward), or "?" and a value to be
followed by its key (the reverse look-up, as in "which image shows the blue square?"). Only the
answer tokens are scored.
"""

import random
import time

import torch

from .text_lm import adamw_with_warmup, answer_loss_and_accuracy, padded

POOL = range(3000, 3100)  # 100 ordinary word pieces of the Mistral vocabulary
QUERIES = 12
BATCH_SIZE = 64


def recall_sequence(rng: random.Random, bos: int, mark: int) -> tuple[list[int], list[int]]:
    pairs = rng.randint(4, 8)
    keys, values = rng.sample(POOL, pairs), rng.sample(POOL, pairs)
    ids, labels = [bos], [-100]
    for key, value in zip(keys, values):
        ids += [key, value]
        labels += [-100, -100]
    for _ in range(QUERIES):
        j = rng.randrange(pairs)
        if rng.random() < 0.5:
            ids += [keys[j], values[j]]
            labels += [-100, values[j]]
        else:
            ids += [mark, values[j], keys[j]]
            labels += [-100, -100, keys[j]]
    return ids, labels


def recall_batch(tokenizer, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    mark = tokenizer.convert_tokens_to_ids("?")
    rows = [recall_sequence(rng, tokenizer.bos_token_id, mark) for _ in range(BATCH_SIZE)]
    return padded(rows, tokenizer.pad_token_id)


def warm_up(model, tokenizer, steps: int) -> None:
    """Train `model` on recall for `steps` steps of 64, with an optimizer of its own; prints its progress."""
    optimizer, schedule = adamw_with_warmup(model, fused=True)
    rng, started = random.Random(0), time.time()
    for step in range(steps):
        loss, accuracy = answer_loss_and_accuracy(model, *recall_batch(tokenizer, rng))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"recall step {step} ({time.time() - started:.0f} s): loss {loss.item():.3f}, answers {accuracy:.2f}",
                flush=True,
            )
