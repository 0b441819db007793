"""What `pip install` (not only an editable install) puts in place: every package folder is in setup.cfg's list,
and every entry point names a module that exists and a name it defines."""

import ast
import configparser
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_every_package_folder_is_installed():
    listed = set(_setup()["options"]["packages"].split())
    assert set(find_packages(str(ROOT / "src"))) <= listed


def test_every_entry_point_names_a_defined_function():
    entry_points = _setup()["options.entry_points"]
    targets = [line.split("=", 1)[1].strip() for group in entry_points for line in entry_points[group].splitlines()
               if "=" in line]  # fmt: skip
    assert len(targets) == 3  # the command, the vLLM plugin, the lmms-eval plugin
    for target in targets:
        module, name = target.split(":")
        path = ROOT / "src" / Path(*module.split("."))
        source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
        defined = {node.name for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        imported = {alias.asname or alias.name for node in ast.parse(source).body if isinstance(node, ast.ImportFrom)
                    for alias in node.names}  # fmt: skip
        assert name in defined | imported, target
