"""bench/serving.py and bench/server_memory.py still run: once each with `--quick` (a tiny model, a few requests)
against a real vLLM server on 127.0.0.1. Runs in the vLLM job of `.ci/run`; nothing is timed or compared."""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run runs this module in its vLLM venv")

from test_bench import run_quick  # noqa: E402


def test_serving_benchmark_runs_in_quick_mode():
    # Eager, as bench/server_memory.py serves: vLLM compiling its graphs first costs 25-35 s here, and checks
    # nothing of the script's.
    (report,) = run_quick("serving.py", "--enforce-eager", timeout=900)
    systems = [row["system"] for row in report["rows"]]
    assert len(systems) == 2 and "vLLM (mmmmodal serve)" in systems
    assert all(row["output_tok_per_s"] > 0 for row in report["rows"])


def test_server_memory_benchmark_runs_in_quick_mode():
    (report,) = run_quick("server_memory.py", timeout=900)
    assert [row["requests"] for row in report["rows"]] == [4, 8, 12]
    assert all(row["rss_mb"] > 100 for row in report["rows"]) and report["baseline_mb"] > 100
