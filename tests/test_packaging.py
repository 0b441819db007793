"""What `pip install` (not only an editable install) puts in place: every package folder is in setup.cfg's list,
and every entry point names a module that exists and a name it defines; and how its modules import each other."""

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


def _package_imports() -> dict[str, set[str]]:
    """Each module of the package (dotted), and the package's modules it imports, at its top or inside a function."""
    source_root, modules = ROOT / "src", {}
    for path in sorted((source_root / "mmmmodal_hf").rglob("*.py")):
        parts = path.relative_to(source_root).with_suffix("").parts
        name, package = ".".join(parts).removesuffix(".__init__"), parts[:-1]
        modules[name] = (path, package)
    graph = {}
    for name, (path, package) in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else ()) + tuple(
                    (node.module or "").split(".") if node.module else ()
                )
                targets = [".".join((*base, alias.name)) for alias in node.names] + [".".join(base)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def test_no_two_modules_of_the_package_import_each_other():
    """Import circles (found: the demo's run and its `--video` stage, a scored turn and the servers that answer it,
    each tied by an import inside a function) make a module unreadable without the other; none is left."""
    graph = _package_imports()
    assert graph["mmmmodal_hf.demo.command"] >= {"mmmmodal_hf.demo.run", "mmmmodal_hf.demo.video"}  # it reads both

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    circles = sorted(
        f"{name} -> {target} -> ... -> {name}"
        for name in graph
        for target in graph[name]
        if name in reaches(target) and not name.startswith(target + ".")  # a package's own submodules read it
    )
    assert not circles, "\n".join(circles)
