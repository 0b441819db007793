"""transformers' own common test suites, taken at test time from the source distribution of the installed version.

The mixins (`ModelTesterMixin`, `ConfigTester`, `ProcessorTesterMixin`) live in `tests/` of transformers' sdist, which
pip downloads; they are never copied into this repository. The sdist ships only the top level of `tests/`, so the few
modules the mixins import from deeper folders are written here as stand-ins, each saying what it replaces:

- `generation/test_utils.py`: `GenerationTesterMixin` (absent; tests/test_generation.py covers what it covers).
- `exporters/test_export.py`: `ExportTesterMixin` (absent; torch.export is not a path this package supports).
- `utils/test_configuration_utils.py`: `config_common_kwargs` (only read for configs without sub-configs).
- `../utils/fetch_hub_objects_for_ci.py`: `url_to_local_path`, the fixture media written here (no hub downloads).
"""

import importlib
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile
import transformers
from filelock import FileLock
from PIL import Image

PACKAGE = "transformers_tests"  # the name the sdist's `tests/` is imported under (its imports are relative)

_STAND_INS = {
    "generation/test_utils.py": '''"""Stand-in: the sdist lacks tests/generation/. mmmmodal-hf's tests/test_generation.py covers its ground."""


class GenerationTesterMixin:
    pass
''',
    "exporters/test_export.py": '''"""Stand-in: the sdist lacks tests/exporters/ (torch.export of the model is not a supported path)."""


class ExportTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''"""Stand-in: the sdist lacks tests/utils/. ConfigTester reads these only for configs without sub-configs."""

config_common_kwargs = {}
''',
}

_FIXTURE_MEDIA = {  # the URLs test_processing_common.py asks for, each as a local file of the same kind
    "coco_sample.png": "image",
    "glass-breaking-151256.mp3": "audio",
    "f2641_0_throatclearing.wav": "audio",
}


def cache_folder() -> Path:
    return Path.home() / ".cache" / "mmmmodal-hf" / f"transformers-{transformers.__version__}-tests"


def _download_tests(root: Path) -> None:
    archive_folder = root / "sdist"
    if not any(archive_folder.glob("transformers-*.tar.gz")):
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        command += ["--dest", str(archive_folder), f"transformers=={transformers.__version__}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"could not download transformers {transformers.__version__}'s source distribution for its common "
                f"test suites (pip download needs the package index):\n{done.stderr[-2000:]}"
            )
    (archive,) = archive_folder.glob("transformers-*.tar.gz")
    package = root / PACKAGE
    with tarfile.open(archive) as sdist:
        for member in sdist.getmembers():
            parts = Path(member.name).parts  # transformers-X/tests/name.py
            if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                (package / parts[2]).parent.mkdir(parents=True, exist_ok=True)
                (package / parts[2]).write_bytes(sdist.extractfile(member).read())


def _write_stand_ins(root: Path) -> None:
    package = root / PACKAGE
    for relative, text in _STAND_INS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    (package / "__init__.py").touch()
    media = root / "media"
    media.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, kind in _FIXTURE_MEDIA.items():
        if kind == "image":
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(media / name)
        else:
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 2) / 16000).astype(np.float32)
            soundfile.write(media / name, tone, 16000, format="MP3" if name.endswith(".mp3") else "WAV")
    (root / "utils").mkdir(exist_ok=True)  # test_processing_common.py imports it from `tests/../utils`
    (root / "utils" / "fetch_hub_objects_for_ci.py").write_text(
        '"""Stand-in: each fixture URL the suites name, as the local file written beside this package."""\n\n'
        "from pathlib import Path\n\n"
        f"MEDIA = Path({str(media)!r})\n\n\n"
        "def url_to_local_path(url, **kwargs):\n"
        "    local = MEDIA / url.rsplit('/', 1)[-1]\n"
        "    return str(local) if local.exists() else url\n"
    )


def load(module: str):
    """`transformers_tests.<module>` (e.g. "test_modeling_common"), downloading the suites on first use."""
    root = cache_folder()
    root.mkdir(parents=True, exist_ok=True)
    # One process at a time (pytest -n 2's workers collect the suites together): the download, the stand-ins each
    # load writes again, and the import that reads them.
    with FileLock(root.with_name(root.name + ".lock")):
        if not (root / PACKAGE / "test_modeling_common.py").exists():
            _download_tests(root)
        _write_stand_ins(root)
        for path in (root, root / "utils"):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        return importlib.import_module(f"{PACKAGE}.{module}")
