"""The docs point where things are: every relative link in the Markdown files and every repository path that a doc,
comment or docstring names exists (the files move; the words that lead to them must move with them)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_FOLDERS = ("src", "docs", "bench", "tests", "conversion", "demo_experiments", "hub_templates", ".ci")
# A path under one of the repository's own folders, as prose names it: `bench/video.py`, docs/limits.md, ...
NAMED_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(re.escape(f) for f in TOP_FOLDERS)})/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# transformers' own test files, which docs/testing.md and the suites' runner name (its repository, not this one).
TRANSFORMERS_TESTS = re.compile(r"tests/(models|generation|exporters|utils|\.\.)(/|$)|tests/test_\w+_common\.py$")


def tracked(*suffixes: str) -> list[Path]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in files if name.endswith(suffixes)]


def test_every_relative_link_in_the_markdown_files_exists():
    broken = []
    for document in tracked(".md"):
        for target in LINK.findall(document.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and "://" not in path and not path.startswith("mailto:"):
                if not (document.parent / path).exists():
                    broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_repository_path_a_doc_comment_or_docstring_names_exists():
    missing = []
    for source in tracked(".md", ".py", ".txt", ".cfg", ".jinja"):
        if source == Path(__file__).resolve():  # its patterns are not references
            continue
        for path in NAMED_PATH.findall(source.read_text(encoding="utf-8")):
            if "*" not in path and not TRANSFORMERS_TESTS.match(path) and not (ROOT / path).exists():
                missing.append(f"{source.relative_to(ROOT)}: {path}")
    assert not missing, missing
