"""One help style for the package's own commands: the module's docstring as written, and every option's default."""

import argparse
import math


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` keeps the description's layout and ends each option's line with `(default: ...)`, or `(required)`."""

    def _get_help_string(self, action):
        if action.required and action.option_strings:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def positive(number: type):
    """An argparse `type` that takes a positive `number` (`int` or `float`), refusing 0, negatives and infinity."""
    return within(number, lambda value: 0 < value < math.inf, "a positive number")


def within(number: type, holds, described: str):
    """An argparse `type` that takes a `number` (`int` or `float`) for which `holds(value)`, else says it must be
    `described` (`within(float, lambda t: t >= 0, "0 or more")`)."""

    def parse(text: str):
        value = number(text)  # a ValueError: argparse's "invalid int value: 'x'"
        if not holds(value):
            raise argparse.ArgumentTypeError(f"must be {described}; got {text}")
        return value

    parse.__name__ = number.__name__
    return parse


port_number = within(int, lambda port: 0 < port < 65536, "from 1 to 65535")  # an argparse `type` for --port


def hub_repo_id(text: str) -> str:
    """An argparse `type` for a Hub repo id (`you/model`, or `model` in the token's own namespace), checked as
    huggingface_hub checks it before any request."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error).split(". Use `repo_type`")[0]) from None
    return text


def add_video_reading_options(parser: argparse.ArgumentParser, where: str | None = None) -> None:
    """How a command reads the videos it is given (`mmmmodal chat`, `web`, `eval`): `video_reading_options(args)`.
    Unset, the processor's defaults hold: 8 frames, whole. `where`: when the flags apply, for the help's heading."""
    group = parser.add_argument_group(f"how videos are read{f' ({where})' if where else ''}")
    frames = group.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=positive(int), help="frames taken from each video (unset: 8)")
    frames.add_argument(
        "--fps", type=positive(float), help="frames taken per second of each video, instead of --num-frames"
    )
    group.add_argument(
        "--pool-frames", action=argparse.BooleanOptionalAction, default=False,
        help="a quarter of the slots per video frame (2x2 average), as a --pool_frames finetune saw (not the "
        "released checkpoints)",
    )  # fmt: skip


def video_reading_options(args: argparse.Namespace) -> dict:
    """The processor's video keywords that `add_video_reading_options`' flags set (none: its defaults)."""
    options = {"num_frames": args.num_frames, "fps": args.fps, "pool_frames": args.pool_frames or None}
    return {key: value for key, value in options.items() if value is not None}


def command_parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    """The parser of one `mmmmodal` subcommand: kebab-case flags, booleans as `--x/--no-x` (by convention)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)
