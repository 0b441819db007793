"""`mmmmodal push`: the checks before anything is sent, and the exact file list of a dry run."""

import json
import subprocess
import sys

import pytest

from mmmmodal_hf.conversion.build import PRESETS, build_checkpoint
from mmmmodal_hf.conversion.push import RefusedToPush, check_folder, files_to_upload
from mmmmodal_hf.conversion.push import main as push

from hub_double import REFUSED_TOKEN, hub_serving, reaching
from tiny_parts import save_tiny_source_models


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_folder):
    root = tmp_path_factory.mktemp("push")
    sources = save_tiny_source_models(root / "sources", tokenizer_folder)
    credits = {part: PRESETS["tinyllama"][part] for part in ("llm", "vision", "audio")}
    build_checkpoint(
        str(sources["llm"]),
        str(sources["siglip"]),
        str(sources["whisper"]),
        root / "built",
        dtype="float32",
        audio_conv_kernel=4,
        credit_names=credits,
    )
    return root / "built"


def test_dry_run_lists_exactly_the_files_it_would_upload(built, capsys):
    (built / "__pycache__").mkdir(exist_ok=True)
    (built / "__pycache__" / "modeling_mmmmodal.cpython-311.pyc").write_bytes(b"cache")
    capsys.readouterr()
    assert push([str(built), "--repo-id", "someone/tiny", "--private", "--revision", "dev", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    listed = json.loads(lines[-1])
    on_disk = sorted(p.name for p in built.iterdir() if p.is_file())
    assert listed == on_disk == files_to_upload(built)
    assert "README.md" in listed and "model.safetensors" in listed and "modeling_mmmmodal.py" in listed
    assert lines[-2] == f"would upload {len(listed)} files to someone/tiny@dev"


def test_pickled_weights_are_refused(built, tmp_path):
    folder = tmp_path / "with_pickle"
    folder.mkdir()
    for name in files_to_upload(built):
        (folder / name).write_bytes((built / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(RefusedToPush, match=r"pickled weights \(pytorch_model.bin\)"):
        check_folder(folder, load_check=False)


def test_card_without_required_metadata_is_refused(built, tmp_path):
    folder = tmp_path / "bad_card"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A model\n")
    with pytest.raises(RefusedToPush, match="lacks language, pipeline_tag, library_name"):
        check_folder(folder, load_check=False)


def test_a_folder_that_does_not_load_is_refused(built, tmp_path):
    folder = tmp_path / "no_code"
    folder.mkdir()
    for name in files_to_upload(built):
        if name != "modeling_mmmmodal.py":
            (folder / name).write_bytes((built / name).read_bytes())
    with pytest.raises(RefusedToPush, match="does not load as a Hub repo"):
        check_folder(folder)


def test_space_for_the_model_is_written_and_checked_in_a_dry_run(built, tmp_path, capsys):
    """`--space` writes a Gradio Space (app.py, card, requirements) that serves the model with `mmmmodal web`."""
    from huggingface_hub import SpaceCard

    space = tmp_path / "space"
    capsys.readouterr()
    assert push([str(built), "--repo-id", "someone/mmmmodal-tiny", "--dry-run", "--space", "someone/mmmmodal-tiny-chat",
                 "--space-dir", str(space)]) == 0  # fmt: skip
    assert (
        'would upload the Space someone/mmmmodal-tiny-chat: ["README.md", "app.py", "requirements.txt"]'
        in capsys.readouterr().out
    )
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == ["someone/mmmmodal-tiny"]
    app = (space / "app.py").read_text()
    assert 'os.environ.get("MMMMODAL_MODEL", "someone/mmmmodal-tiny")' in app and "build_app(" in app
    compile(app, "app.py", "exec")
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert requirements[0] == "mmmmodal-hf[web,video]"  # the page takes videos


def test_the_spaces_requirement_line_is_written_as_given_and_a_bad_one_refused_first(built, tmp_path, capsys):
    """Until the package is on PyPI a Space installs it from its repository; a line pip cannot read would fail only in
    the Space's build, after the upload."""
    from_git = "mmmmodal-hf[web,video] @ git+https://github.com/someone/mmmmodal-hf"
    assert push([str(built), "--repo-id", "someone/tiny", "--dry-run", "--space", "someone/tiny-chat",
                 "--space-dir", str(tmp_path / "space"), "--space-package", from_git]) == 0  # fmt: skip
    assert (tmp_path / "space" / "requirements.txt").read_text().splitlines()[0] == from_git
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        push([str(built), "--repo-id", "someone/tiny", "--dry-run", "--space", "someone/tiny-chat",
              "--space-dir", str(tmp_path / "refused"), "--space-package", "mmmmodal-hf[web"])  # fmt: skip
    assert stopped.value.code == 2 and not (tmp_path / "refused").exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("mmmmodal push: error: argument --space-package: not a pip requirement line ("), error


def test_a_push_uploads_exactly_the_listed_files_and_the_space(built, tmp_path):
    """A real upload, to a stand-in for the Hub's HTTP API on 127.0.0.1 (tests/hub_double.py): huggingface_hub
    creates the repo, the branch and the Space and commits; what arrives is the folder's files byte for byte,
    exactly the dry run's list, and the Space's three files."""
    with hub_serving({}) as (endpoint, hub):
        completed = subprocess.run(
            [sys.executable, "-m", "mmmmodal_hf.cli", "push", str(built), "--repo-id", "someone/tiny", "--private",
             "--revision", "dev", "--space", "someone/tiny-chat", "--space-dir", str(tmp_path / "space")],
            capture_output=True, text=True, timeout=600, env=reaching(endpoint, tmp_path / "hf_home", HF_TOKEN="hf_stand_in"),
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-3000:]
        listed = json.loads(completed.stdout.strip().splitlines()[1])
        assert completed.stdout.startswith(f"uploaded {len(listed)} files to someone/tiny@dev")
        assert hub.created["someone/tiny"]["visibility"] == "private"
        assert (
            hub.created["someone/tiny-chat"]["type"] == "space" and hub.created["someone/tiny-chat"]["sdk"] == "gradio"
        )
        sent = hub.uploaded["models/someone/tiny@dev"]
        assert sorted(sent) == listed == files_to_upload(built)
        assert all(sent[name] == (built / name).read_bytes() for name in listed)
        space = hub.uploaded["spaces/someone/tiny-chat@main"]
        assert sorted(space) == ["README.md", "app.py", "requirements.txt"]
        assert space["app.py"] == (tmp_path / "space" / "app.py").read_bytes()


def test_a_push_the_hub_refuses_ends_in_one_line(built, tmp_path):
    """A revoked token: the Hub's 401 reaches the user as one line, and nothing is uploaded."""
    with hub_serving({}) as (endpoint, hub):
        completed = subprocess.run(
            [sys.executable, "-m", "mmmmodal_hf.cli", "push", str(built), "--repo-id", "someone/tiny"],
            capture_output=True,
            text=True,
            timeout=600,
            env=reaching(endpoint, tmp_path / "hf_home", HF_TOKEN=REFUSED_TOKEN),
        )
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last == (
        "mmmmodal push: the Hub answered 401 Unauthorized: Invalid credentials in Authorization header"
        " (the token: --token, HF_TOKEN or `hf auth login`)"
    ), completed.stderr
    assert hub.uploaded == {} and hub.created == {}
