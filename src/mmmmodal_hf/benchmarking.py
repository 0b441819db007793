"""Timing and reporting for the benchmarks (`bench/`) and the demo's experiments: medians, the machine, one JSON line."""

import json
import os
import platform
import statistics
import sys
import time

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(function, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median time of each function, runs interleaved (a, b, a, b, ...) so drift hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def report(name: str, rows: list[dict], extra: dict | None = None) -> None:
    """Print a table and one JSON line (for BENCHMARKS.md)."""
    print(f"\n== {name} ==  ({', '.join(f'{k}={v}' for k, v in machine().items())})")
    if rows:
        keys = list(rows[0])
        print(" | ".join(keys))
        for row in rows:
            print(" | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    print("JSON " + json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}))
    sys.stdout.flush()
