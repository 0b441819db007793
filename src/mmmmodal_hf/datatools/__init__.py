"""`mmmmodal data`: tools for the training data (validate, combine, relate, transcribe), deterministic for a seed."""

import argparse
import sys

_SUBCOMMANDS = {
    "validate": "check files, tags and lengths of a dataset against a processor",
    "combine": "join single-media rows into multi-image, multi-audio, multi-turn conversations",
    "relate": "relationship QA over pairs of media from their captions, written by an instruct LLM",
    "transcribe": "pseudo-label audio with a Whisper checkpoint, keeping transcripts above a score",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mmmmodal data", description=__doc__)
    choices = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for name, help_text in _SUBCOMMANDS.items():
        choices.add_parser(name, help=help_text, add_help=False)
    args, _ = parser.parse_known_args(argv[:1])
    from importlib import import_module

    return import_module(f"mmmmodal_hf.datatools.{args.tool}").main(argv[1:])
