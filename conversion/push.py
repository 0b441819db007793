"""Upload a built or converted folder to the Hugging Face Hub.

    mmmmodal push mmmmodal-tinyllama --repo-id you/mmmmodal-tinyllama [--private] [--revision dev] [--dry-run]

Before anything is sent: the folder must hold no pickled weights, its model card metadata must
parse with huggingface_hub's card classes and name languages, license, base models and pipeline
tag, and the folder must load with AutoModel + AutoProcessor (trust_remote_code) in a fresh
process and generate. The token comes from `--token`, `HF_TOKEN` or `hf auth login`.
"""

import argparse
import json
import re
import sys
from importlib import resources
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError

from mmmmodal_hf.cli_errors import require_loadable
from mmmmodal_hf.cli_help import command_parser, hub_repo_id
from mmmmodal_hf.conversion.convert import PICKLE_SUFFIXES
from mmmmodal_hf.conversion.model_card import check_card
from mmmmodal_hf.conversion.verify import FolderDoesNotLoad, check_folder_loads

_SKIPPED_PARTS = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}
_SKIPPED_NAMES = {".DS_Store"}


class RefusedToPush(ValueError):
    """The folder is not fit to publish; the message says why."""


def _run_state(relative: Path) -> bool:
    """Trainer's own state beside the exported model (`checkpoint-N` folders, TensorBoard's `runs/`): not the model."""
    top = relative.parts[0]
    return len(relative.parts) > 1 and (top == "runs" or re.fullmatch(r"checkpoint-\d+", top) is not None)


def files_to_upload(folder: str | Path) -> list[str]:
    """Every file `push` sends, relative to `folder`, sorted; caches, VCS folders and Trainer's run state are left out."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if _run_state(relative):
            continue
        if path.is_file() and not (set(relative.parts) & _SKIPPED_PARTS) and path.name not in _SKIPPED_NAMES:
            if not path.name.endswith(".pyc"):
                files.append(relative.as_posix())
    return files


def check_folder(folder: str | Path, load_check: bool = True) -> list[str]:
    """Everything `push` checks before sending; returns the files it would upload."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RefusedToPush(f"{folder} is not a folder")
    files = files_to_upload(folder)
    pickled = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise RefusedToPush(f"{folder} holds pickled weights ({', '.join(pickled)}); publish safetensors only")
    if "README.md" not in files:
        raise RefusedToPush(f"{folder} has no model card (README.md); `mmmmodal build` and `convert` write one")
    try:
        check_card(folder / "README.md")
    except ValueError as error:
        raise RefusedToPush(str(error)) from error
    if load_check:
        try:
            check_folder_loads(folder)
        except FolderDoesNotLoad as error:
            raise RefusedToPush(str(error)) from error
    return files


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload MMMModal model",
    token: str | None = None,
    repo_type: str = "model",
    dry_run: bool = False,
) -> list[str]:
    """Check the folder, then create the repo (and branch) if needed and upload; returns the files sent."""
    files = check_folder(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi, ModelCard

    ModelCard.load(Path(folder) / "README.md").validate(repo_type=repo_type)  # the Hub's own metadata check
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
        allow_patterns=files,
    )
    return files


# The Space installs the package with the page and video reading (the page takes videos). Until the package is on
# PyPI, `--space-package "mmmmodal-hf[web,video] @ git+https://github.com/OWNER/mmmmodal-hf"` names its repository.
SPACE_PACKAGE = "mmmmodal-hf[web,video]"


def requirement_line(text: str) -> str:
    """An argparse `type` for `--space-package`: one pip requirement, refused here rather than in the Space's build."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement as error:
        raise argparse.ArgumentTypeError(f"not a pip requirement line ({str(error).splitlines()[0]})") from None
    return text


def write_space(model_id: str, output_dir: str | Path, package_requirement: str = SPACE_PACKAGE) -> list[str]:
    """A Space folder (app.py, README.md with front matter, requirements.txt) serving `model_id` with `mmmmodal web`."""
    import gradio

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "model_id": model_id,
        "title": f"MMMModal {model_id.split('/')[-1]}",
        "gradio_version": gradio.__version__,
        "package_requirement": package_requirement,
    }
    for name in ("app.py", "README.md", "requirements.txt"):
        template = resources.files("mmmmodal_hf.hub_templates") / "space" / name
        (output_dir / name).write_text(template.read_text(encoding="utf-8").format(**values), encoding="utf-8")
    return sorted(p.name for p in output_dir.iterdir())


def push_space(
    space_id: str,
    model_id: str,
    token: str | None = None,
    private: bool = False,
    package_requirement: str = SPACE_PACKAGE,
    dry_run: bool = False,
    staging: str | Path | None = None,
) -> list[str]:
    """Write the Space for `model_id` and create/upload it as a Gradio Space (`dry_run`: write only)."""
    import tempfile

    from huggingface_hub import SpaceCard

    folder = Path(staging or tempfile.mkdtemp(prefix="mmmmodal-space-"))
    files = write_space(model_id, folder, package_requirement)
    card = SpaceCard.load(folder / "README.md")
    if card.data.sdk != "gradio" or card.data.app_file != "app.py":
        raise RefusedToPush(f"the Space card does not declare a Gradio app: {card.data}")
    compile((folder / "app.py").read_text(), "app.py", "exec")
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=space_id, repo_type="space", commit_message="MMMModal web chat")
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("mmmmodal push", __doc__)
    parser.add_argument("folder", help="a folder written by `mmmmodal build`, `convert` or `train`")
    parser.add_argument("--repo-id", required=True, type=hub_repo_id,
                        help="the model repo to create or update, e.g. you/model")  # fmt: skip
    parser.add_argument(
        "--private", action=argparse.BooleanOptionalAction, default=False, help="create the repo private"
    )
    parser.add_argument("--revision", help="branch to push to (created if needed)")
    parser.add_argument("--commit-message", default="Upload MMMModal model", help="the Hub commit's message")
    parser.add_argument("--token", help="a Hub token (None: HF_TOKEN or the stored login)")
    parser.add_argument(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run every check and list the files; send nothing",
    )
    parser.add_argument(
        "--space",
        type=hub_repo_id,
        help="also write a Gradio Space serving the model (`mmmmodal web`) to this Space id",
    )
    parser.add_argument(
        "--space-package", default=SPACE_PACKAGE, type=requirement_line,
        help="the Space's requirement line that installs this package (a PyPI name, or NAME @ git+URL)",
    )  # fmt: skip
    parser.add_argument("--space-dir", help="write the Space folder here (None: a temporary folder)")
    return parser


def hub_refusal(error: HfHubHTTPError) -> str:
    """The Hub's answer in one line: its status and its own message, and where the token comes from when it is
    the token that was refused."""
    response = error.response
    status = f"{response.status_code} {response.reason_phrase}" if response is not None else "an error"
    said = error.server_message or str(error).strip().splitlines()[0]
    hint = (
        " (the token: --token, HF_TOKEN or `hf auth login`)"
        if response is not None and response.status_code in (401, 403)
        else ""
    )
    return f"the Hub answered {status}: {said}{hint}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_loadable(args.folder, "a model to publish")
    try:
        files = push_folder(
            args.folder,
            args.repo_id,
            args.private,
            args.revision,
            args.commit_message,
            args.token,
            dry_run=args.dry_run,
        )
    except RefusedToPush as error:
        print(f"mmmmodal push: refused: {error}", file=sys.stderr)
        return 1
    except HfHubHTTPError as error:
        print(f"mmmmodal push: {hub_refusal(error)}", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}" + (f"@{args.revision}" if args.revision else ""))
    print(json.dumps(files))
    if args.space:
        space_files = push_space(
            args.space, args.repo_id, args.token, args.private, args.space_package, args.dry_run, args.space_dir
        )
        print(f"{verb} the Space {args.space}: {json.dumps(space_files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
