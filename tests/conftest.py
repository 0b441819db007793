import os
from pathlib import Path

import pytest
import torch

from mmmmodal_hf import MMMModalForConditionalGeneration
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

from tiny_parts import tiny_config, tiny_model, tiny_processor

# Offline, and at most the 2 threads the CI machine has.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# On a GPU, TF32 matmuls and convolutions would round results away from the CPU's that tests compare with.
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> Path:
    return mistral_tokenizer_folder(tmp_path_factory.mktemp("mistral_tokenizer"))


@pytest.fixture
def processor(tokenizer_folder):
    return tiny_processor(tokenizer_folder)


@pytest.fixture(scope="session")
def session_processor(tokenizer_folder):
    return tiny_processor(tokenizer_folder)


@pytest.fixture(scope="session")
def model(session_processor):
    return tiny_model(session_processor)


@pytest.fixture(scope="session")
def indexed_model(session_processor):
    """The tiny model with ordinal embeddings on its media slots (`media_index_embeddings`)."""
    return tiny_model(session_processor, media_index_embeddings=4)


@pytest.fixture(scope="session")
def mixed_model(session_processor):
    """The tiny model with the 3 tokens before each position mapped into its input (`previous_token_mix`), the maps random."""
    model = tiny_model(session_processor, previous_token_mix=3)
    with torch.no_grad():
        model.model.previous_token_mix.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="session")
def base_folder(tmp_path_factory, session_processor):
    """An untrained tiny checkpoint on disk: what `mmmmodal train` starts from."""
    folder = tmp_path_factory.mktemp("base_checkpoint")
    torch.manual_seed(0)
    MMMModalForConditionalGeneration(tiny_config(session_processor)).save_pretrained(folder)
    session_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def saved_folder(tmp_path_factory, model, session_processor):
    """The tiny model saved as a Hub repo (weights, processor, code), for tests that load it as users do."""
    folder = tmp_path_factory.mktemp("hub_repo")
    model.save_pretrained(folder)
    session_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def served_folder(tmp_path_factory, tokenizer_folder):
    """A tiny model vLLM's CPU attention accepts (head_dim 32), saved as a Hub repo: the vLLM tests serve it."""
    from vllm_parts import save_served_folder

    return save_served_folder(tmp_path_factory.mktemp("served"), tokenizer_folder)


@pytest.fixture(scope="session")
def served_media(tmp_path_factory):
    """PNG and WAV files for the vLLM tests, named (`write_media`)."""
    from vllm_parts import write_media

    return write_media(tmp_path_factory.mktemp("served_media"))
