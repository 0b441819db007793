"""bench/serving.py still runs: once with `--quick` (a tiny model, two chats, two tokens) against a real vLLM server
on 127.0.0.1. Runs in the vLLM job of `.ci/run`; nothing is timed or compared."""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run runs this module in its vLLM venv")

from test_bench import run_quick  # noqa: E402


def test_serving_benchmark_runs_in_quick_mode():
    (report,) = run_quick("serving.py", timeout=900)
    systems = [row["system"] for row in report["rows"]]
    assert len(systems) == 2 and "vLLM (mmmmodal serve)" in systems
    assert all(row["output_tok_per_s"] > 0 for row in report["rows"])
