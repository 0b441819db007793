"""On a CUDA device the model keeps its contract: same answers as on the CPU, bf16 training, the chat cache.

These run only where `torch.cuda.is_available()` (as transformers' own `require_torch_accelerator`
tests do); CI's machine has no GPU. On a GPU machine: `pytest tests/test_cuda.py tests/test_modeling.py
tests/test_training.py` (the batching test then runs on the GPU too, and the training tests' `Trainer`).
"""

import copy

import pytest
import torch

from mmmmodal_hf import MMMModalChatSession

from tiny_parts import random_clip, random_image, requires_cuda, two_turn_chat

pytestmark = requires_cuda


@pytest.fixture(scope="module")
def cuda_model(model):
    return copy.deepcopy(model).to("cuda")


def chat_inputs(processor, device):
    return processor.apply_chat_template(
        two_turn_chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(device)


def test_logits_and_greedy_generation_equal_the_cpu(model, cuda_model, session_processor):
    with torch.no_grad():
        cpu_inputs, gpu_inputs = chat_inputs(session_processor, "cpu"), chat_inputs(session_processor, "cuda")
        torch.testing.assert_close(
            cuda_model(**gpu_inputs).logits.cpu(), model(**cpu_inputs).logits, atol=1e-4, rtol=1e-4
        )
        settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
        on_gpu = cuda_model.generate(**gpu_inputs, **settings)
        on_cpu = model.generate(**cpu_inputs, **settings)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_bf16_training_step_and_generation(model, session_processor):
    bf16 = copy.deepcopy(model).to("cuda", torch.bfloat16).train()
    inputs = chat_inputs(session_processor, "cuda")
    out = bf16(**inputs, labels=inputs["input_ids"])
    out.loss.backward()  # the loss itself is taken in float32, as transformers' loss functions upcast
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    for name in ("model.image_projector", "model.audio_projector", "model.language_model", "lm_head"):
        grads = [p.grad for n, p in bf16.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g.float()).all() for g in grads), name
    bf16.eval()
    with torch.no_grad():
        generated = bf16.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 8


def test_chat_session_keeps_its_cache_on_the_gpu(cuda_model, session_processor):
    pieces = []
    session = MMMModalChatSession(cuda_model, session_processor, max_new_tokens=6, min_new_tokens=6)
    first = session.send("What is this?", images=[random_image(20)], on_text=pieces.append)
    second = session.send("And this sound?", audio=[random_clip(21)])
    assert "".join(pieces) == first and second is not None
    assert session.cached_tokens > 0
    assert all(layer.keys.device.type == "cuda" for layer in session._cache.layers)
