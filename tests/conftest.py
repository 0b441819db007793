import atexit
import os
import shutil
import tempfile
from pathlib import Path

# At most the 2 threads the CI machine has, shared among pytest-xdist's workers (`pytest -n 2`, as CI runs the
# suite): each takes its share, and so do the commands its tests start. Each worker has its own transformers modules
# cache: two workers loading folders of the same name at once would copy their code into the same place.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if WORKER:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix=f"mmmmodal-tests-{WORKER}-modules-")  # new each run
    atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from mmmmodal_hf import MMMModalForConditionalGeneration  # noqa: E402
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder  # noqa: E402

from tiny_parts import tiny_config, tiny_model, tiny_processor  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: no test reaches the Hub
torch.set_num_threads(THREADS)
# On a GPU, TF32 matmuls and convolutions would round results away from the CPU's that tests compare with.
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def pytest_collection_modifyitems(items):
    """Under `pytest -n 2` the quick demo's file (a quarter of the suite's time) goes first, so that one worker runs
    it while the other takes the rest: `--dist loadfile` hands the files out in collection order."""
    if WORKER:
        items.sort(key=lambda item: item.path.name != "test_demo.py")


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
