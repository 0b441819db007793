"""One help style for the package's own commands: the module's docstring as written, and every option's default."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` keeps the description's layout and ends each option's line with `(default: ...)`, or `(required)`."""

    def _get_help_string(self, action):
        if action.required and action.option_strings:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def add_video_reading_options(parser: argparse.ArgumentParser) -> None:
    """How a chat reads the videos it is given (`mmmmodal chat`, `mmmmodal web`): `video_reading_options(args)`."""
    parser.add_argument("--num-frames", type=int, default=8, help="frames taken from each video")
    parser.add_argument(
        "--pool-frames", action=argparse.BooleanOptionalAction, default=False,
        help="a quarter of the slots per video frame (2x2 average), as a --pool_frames finetune saw (not the "
        "released checkpoints)",
    )  # fmt: skip


def video_reading_options(args: argparse.Namespace) -> dict:
    """The processor's video keywords from `add_video_reading_options`' flags."""
    return {"num_frames": args.num_frames, "pool_frames": args.pool_frames}


def command_parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    """The parser of one `mmmmodal` subcommand: kebab-case flags, booleans as `--x/--no-x` (by convention)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)
