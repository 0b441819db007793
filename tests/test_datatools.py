"""`mmmmodal data validate` finds planted defects; `combine` is deterministic, keeps tag/file order and follows its mix."""

import json
import re

import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from mmmmodal_hf.cli import main as cli
from mmmmodal_hf.datatools.combine import combine_rows, parse_distribution
from mmmmodal_hf.datatools.validate import validate_dataset

from tiny_parts import random_clip

TAG = re.compile(r"<(image|audio)>")


def write_media(folder):
    """Two images and two clips; returns {relative path: kind}."""
    (folder / "media").mkdir(parents=True, exist_ok=True)
    kinds = {}
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / "media" / name)
        kinds[f"media/{name}"] = "image"
    for seed, name in ((1, "tone.wav"), (2, "beep.wav")):
        soundfile.write(folder / "media" / name, random_clip(seed), 16000)
        kinds[f"media/{name}"] = "audio"
    return kinds


def image_row(path, colour="red"):
    return {
        "conversations": [
            {"role": "user", "content": "<image> </image>\nWhat colour is it?"},
            {"role": "assistant", "content": f"It is {colour}."},
        ],
        "filename": [path],
    }


def audio_row(path):
    return {
        "conversations": [
            {"role": "user", "content": "<audio> </audio>\nApa bunyi ini?"},
            {"role": "assistant", "content": "Bunyi nada."},
        ],
        "filename": [path],
    }


def relation_row(image, audio):
    return {
        "conversations": [
            {"role": "user", "content": "<image> </image>\n<audio> </audio>\nDo they match?"},
            {"role": "assistant", "content": "No."},
        ],
        "filename": [image, audio],
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_validate_passes_a_clean_dataset(tmp_path, base_folder, capsys):
    write_media(tmp_path)
    rows = [image_row("media/red.png"), audio_row("media/tone.wav"), relation_row("media/blue.png", "media/beep.wav")]
    data = write_jsonl(tmp_path / "clean.jsonl", rows)
    report_file, histogram = tmp_path / "out" / "report.json", tmp_path / "out" / "lengths.png"  # folder made
    code = cli(
        ["data", "validate", str(data), "--processor", str(base_folder), "--block-size", "512",
         "--report", str(report_file), "--histogram", str(histogram)]
    )  # fmt: skip
    assert code == 0
    # A histogram Pillow cannot write is refused before any row is read (it failed after them all).
    assert cli(["data", "validate", str(data), "--processor", str(base_folder), "--histogram", "lengths.txt"]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("mmmmodal data: --histogram lengths.txt: name an image file Pillow writes, such as .png")
    )
    report = json.loads(report_file.read_text())
    assert report["ok"] and report["rows"] == 3
    assert report["kinds"] == {"image": 1, "audio": 1, "mixed": 1}
    assert report["images_per_row"] == {"1": 2, "0": 1} and report["audio_per_row"] == {"0": 1, "1": 2}
    assert 0 < report["length_percentiles"]["p50"] <= report["length_percentiles"]["max"] < 512
    assert Image.open(histogram).size == (900, 360)


def test_validate_finds_every_planted_defect(tmp_path, session_processor):
    write_media(tmp_path)
    rows = [
        image_row("media/red.png"),  # line 1: fine
        image_row("media/gone.png"),  # line 2: missing file
        {**image_row("media/red.png"), "filename": ["media/red.png", "media/blue.png"]},  # line 3: 1 tag, 2 files
        image_row("media/tone.wav"),  # line 4: an audio file behind an image tag
        {  # line 5: six images in one turn: over the block of 120
            "conversations": [
                {"role": "user", "content": "<image> </image>\n" * 6 + "Describe them all."},
                {"role": "assistant", "content": "Six squares."},
            ],
            "filename": ["media/red.png"] * 6,
        },
        audio_row("media/beep.wav"),  # line 6: fine
    ]
    data = write_jsonl(tmp_path / "planted.jsonl", rows)
    report = validate_dataset(data, session_processor, block_size=120)
    found = {kind: [row for row, _ in items] for kind, items in report.problems.items() if items}
    assert found == {
        "missing file": ["planted.jsonl:2"],
        "unusable row": ["planted.jsonl:3"],
        "wrong media kind": ["planted.jsonl:4"],
        "too long": ["planted.jsonl:5"],
    }
    messages = {kind: items[0][1] for kind, items in report.problems.items() if items}
    assert "gone.png does not exist" in messages["missing file"]
    assert "2 files in 'filename' but 1 media tags" in messages["unusable row"]
    assert "tone.wav is audio, but its tag says image" in messages["wrong media kind"]
    assert re.search(r"\d+ tokens, \d+ over the block of 120", messages["too long"])
    assert not report.ok and "too long: 1 row\n" in report.summary()


def test_validate_reports_a_line_cut_in_half_as_a_defect_and_reads_on(tmp_path, base_folder, capsys):
    write_media(tmp_path)
    data = write_jsonl(
        tmp_path / "cut.jsonl", [image_row("media/red.png"), image_row("media/blue.png"), audio_row("media/tone.wav")]
    )
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0], lines[1][:25], lines[2]]) + "\n")
    report_file = tmp_path / "report.json"
    code = cli(["data", "validate", str(data), "--processor", str(base_folder), "--report", str(report_file)])
    assert code == 1
    report = json.loads(report_file.read_text())
    assert report["rows"] == 3 and report["kinds"] == {"image": 1, "audio": 1}  # the rows around it were read
    assert report["problems"] == {
        "unusable row": [
            ["cut.jsonl:2", "row cut.jsonl:2: not valid JSON (Unterminated string starting at: column 21)"]
        ]
    }
    assert "unusable row: 1 row\n" in capsys.readouterr().out


@pytest.fixture
def single_media_sources(tmp_path):
    kinds = write_media(tmp_path)
    images = [p for p, k in kinds.items() if k == "image"]
    clips = [p for p, k in kinds.items() if k == "audio"]
    image_rows = write_jsonl(tmp_path / "images.jsonl", [image_row(images[i % 2]) for i in range(30)])
    audio_rows = write_jsonl(tmp_path / "audio.jsonl", [audio_row(clips[i % 2]) for i in range(30)])
    relations = write_jsonl(
        tmp_path / "relations.jsonl", [relation_row(images[i % 2], clips[i % 2]) for i in range(10)]
    )
    return [image_rows, audio_rows, relations], {str((tmp_path / p).resolve()): k for p, k in kinds.items()}


def test_combine_is_deterministic_keeps_tag_file_order_and_follows_the_mix(
    tmp_path, single_media_sources, session_processor
):
    sources, kind_of = single_media_sources
    mix = parse_distribution("image=0.5,audio=0.2,mixed=0.3")
    sizes = parse_distribution("1:0.2,2:0.4,3:0.3,4:0.1", int)
    out = tmp_path / "out" / "combined.jsonl"
    result = combine_rows(sources, out, count=2000, mix=mix, rows_per_output=sizes, seed=7)
    first = out.read_bytes()
    combine_rows(sources, out, count=2000, mix=mix, rows_per_output=sizes, seed=7)
    assert out.read_bytes() == first
    combine_rows(sources, tmp_path / "other.jsonl", count=2000, mix=mix, rows_per_output=sizes, seed=8)
    assert (tmp_path / "other.jsonl").read_bytes() != first

    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert len(rows) == 2000 and result["rows"] == 2000
    for kind, probability in mix.items():
        assert abs(result["kinds"].get(kind, 0) / 2000 - probability) < 0.04, (kind, result["kinds"])
    assert max(result["images_per_row"]) >= 3 and max(result["audio_per_row"]) >= 3
    for row in rows:  # every tag keeps its own file, in order
        tags = [t for m in row["conversations"] for t in TAG.findall(m["content"])]
        files = [kind_of[str((out.parent / f).resolve())] for f in row["filename"]]
        assert tags == files
        assert row["conversations"][0]["role"] == "user" and row["conversations"][-1]["role"] == "assistant"
    # The output reads back as training data: re-validated with the processor (decoding every file).
    report = validate_dataset(out, session_processor, block_size=4096, limit=300)
    assert report.ok and report.rows == 300
    assert set(report.kinds) == {"image", "audio", "mixed"}


def test_combine_writes_parquet_and_refuses_an_impossible_mix(tmp_path, single_media_sources):
    sources, _ = single_media_sources
    out = tmp_path / "combined.parquet"
    combine_rows(sources, out, count=50, seed=0)
    table = pq.read_table(out)
    assert table.num_rows == 50 and set(table.column_names) == {"conversations", "filename"}
    with pytest.raises(ValueError, match="asks for audio rows but the sources hold none"):
        combine_rows(sources[:1], tmp_path / "x.jsonl", count=5, mix={"image": 0.5, "audio": 0.5})
