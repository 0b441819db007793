"""Every benchmark in bench/ still runs: each script once with `--quick` (tiny sizes, one repeat), as its docstring's
command would run it. Nothing is timed or compared here; a change that breaks a benchmark fails CI.
bench/serving.py and bench/server_memory.py need vLLM and run in the vLLM job (test_bench_serving.py)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NEEDS_VLLM = ("serving.py", "server_memory.py")
SCRIPTS = sorted(
    path.name for path in BENCH.glob("*.py") if "__main__" in path.read_text() and path.name not in NEEDS_VLLM
)


def run_quick(script: str, *options: str, timeout: int = 600) -> list[dict]:
    """The script's JSON reports, after asserting it ran to the end."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *options],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = [json.loads(line[len("JSON ") :]) for line in completed.stdout.splitlines() if line.startswith("JSON ")]
    assert reports, completed.stdout[-2000:]
    return reports


def test_every_benchmark_is_found():
    assert {"overhead.py", "chat_session.py", "memory.py", "packing.py", "processor.py", "towers.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_quick_mode(script):
    for report in run_quick(script):
        assert report["rows"], report["benchmark"]
        for row in report["rows"]:
            numbers = [
                value for value in row.values() if isinstance(value, (int, float)) and not isinstance(value, bool)
            ]
            # Figures only: a quick run's timings are noise (a per-token time may even come out negative).
            assert all(math.isfinite(value) for value in numbers), row


def test_the_video_benchmarks_pooled_prefill_runs_in_quick_mode():
    """The case a GPU run measures (`--pooled-prefill --size tinyllama`), at the quick sizes: pooled frames, fewer
    positions."""
    pytest.importorskip("av", reason="the video benchmark writes its video with PyAV (the [video] extra)")
    (report,) = run_quick("video.py", "--pooled-prefill")
    (row,) = report["rows"]
    pooled, whole = (int(n) for n in re.match(r"positions (\d+) vs (\d+)", row["detail"]).groups())
    assert pooled < whole and math.isfinite(row["ratio"]), row
