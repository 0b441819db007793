"""Loading never unpickles, and the Hub-loaded code makes no network or subprocess calls of its own."""

import ast
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mmmmodal_hf
from mmmmodal_hf import MMMModalForConditionalGeneration

from fresh_process import fresh_process_chat, write_fresh_process_media
from tiny_parts import tiny_config

HUB_MODULES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py", "media_mmmmodal.py")
PACKAGE = Path(mmmmodal_hf.__file__).parent

# Modules that reach the network, start processes or unpickle: none may be imported by Hub code.
FORBIDDEN_MODULES = {
    "socket", "ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
    "subprocess", "multiprocessing", "pty", "pickle", "dill", "shelve", "marshal", "ctypes",
}  # fmt: skip
# (owner, name) of calls that run programs, evaluate strings or unpickle ("" for a bare name).
FORBIDDEN_CALLS = {
    ("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execve"), ("os", "spawnv"), ("os", "fork"),
    ("", "eval"), ("", "exec"), ("", "__import__"), ("torch", "load"), ("np", "load"), ("numpy", "load"),
}  # fmt: skip
# Remote media: the http(s) URLs a user passes are fetched in one place, `media_mmmmodal._fetch`, with
# `httpx.get` (as transformers' own loaders fetch them), and only for strings that start with a URL prefix.
URL_FETCHING_MODULE, URL_FETCH = "media_mmmmodal.py", ("httpx", "get")


class _Unpickled(Exception):
    pass


class _Trap:
    """Unpickling this runs code: it writes a marker file. A safe loader never gets that far."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the pickle ran"))


def test_folder_with_only_pickled_weights_is_refused_unread(tmp_path, session_processor):
    folder = tmp_path / "pickled"
    MMMModalForConditionalGeneration(tiny_config(session_processor)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pickle_ran.txt"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": _Trap(marker)}, handle)
    for load in (
        lambda: MMMModalForConditionalGeneration.from_pretrained(folder),
        lambda: AutoModel.from_pretrained(folder, trust_remote_code=True),
    ):
        with pytest.raises(OSError, match="never loads pickled weights"):
            load()
    with pytest.raises(ValueError, match="safetensors weights only"):
        MMMModalForConditionalGeneration.from_pretrained(folder, use_safetensors=False)
    assert not marker.exists()


def _imports_and_calls(source: str) -> tuple[set[str], list[tuple[str, str, int]]]:
    tree = ast.parse(source)
    imports, calls = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imports.add(node.module)
            calls.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            owner = getattr(function.value, "id", "") if isinstance(function, ast.Attribute) else ""
            calls.append((owner, name, node.lineno))
    return imports, calls


@pytest.mark.parametrize("module", HUB_MODULES)
def test_hub_modules_import_and_call_nothing_that_reaches_out(module):
    source = (PACKAGE / module).read_text()
    imports, calls = _imports_and_calls(source)
    allowed = {URL_FETCH[0]} if module == URL_FETCHING_MODULE else set()
    assert not {name.split(".")[0] for name in imports} & (FORBIDDEN_MODULES - allowed), imports
    for owner, name, line in calls:
        assert (owner, name) not in FORBIDDEN_CALLS, (module, owner, name, line)
        if owner == URL_FETCH[0]:
            assert (owner, name) == URL_FETCH, (module, line)
    if module != URL_FETCHING_MODULE:
        return
    fetch = source[source.index("def _fetch(") : source.index("\n\n\n", source.index("def _fetch("))]
    assert sum(name == URL_FETCH[1] for owner, name, _ in calls if owner == URL_FETCH[0]) == 1
    assert "httpx.get(" in fetch, "the one network call is the one in _fetch"
    # _fetch is reached only for URL strings: http(s), fetched, and data: URLs, decoded before any network call.
    uses = [line for line in source.splitlines() if "_fetch(" in line and "def _fetch(" not in line]
    assert uses and all("if text.startswith(URL_PREFIXES)" in line for line in uses), uses
    assert 'URL_PREFIXES = ("http://", "https://", "data:")' in source
    assert fetch.index('if url.startswith("data:"):') < fetch.index("httpx.get(")


AUDITED = textwrap.dedent(
    """
    import sys, json
    import torch
    from transformers import AutoModel, AutoProcessor
    import huggingface_hub, urllib3  # their import-time probes (urllib3 binds ::1 to test IPv6) are not ours

    events = []
    WATCHED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "pickle.find_class", "urllib.Request")
    sys.addaudithook(lambda event, args: events.append(event) if event.startswith(WATCHED) else None)

    folder = sys.argv[1]
    chat = json.loads(sys.argv[2])
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    print(json.dumps({"events": sorted(set(events)), "module": type(model).__module__}))
    """
)


def test_loading_and_generating_from_a_folder_makes_no_network_subprocess_or_pickle_call(base_folder, tmp_path):
    """Python's audit hooks see every socket, subprocess and unpickling event of the child process."""
    import json

    chat = fresh_process_chat(write_fresh_process_media(tmp_path))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", AUDITED, str(base_folder), json.dumps(chat)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules.")
    assert report["events"] == []
    assert torch.__version__  # the child imported the same torch
