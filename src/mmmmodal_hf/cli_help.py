"""One help style for the package's own commands: the module's docstring as written, and every option's default."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` keeps the description's layout and ends each option's line with `(default: ...)`, or `(required)`."""

    def _get_help_string(self, action):
        if action.required and action.option_strings:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def command_parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    """The parser of one `mmmmodal` subcommand: kebab-case flags, booleans as `--x/--no-x` (by convention)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)
