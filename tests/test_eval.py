"""`mmmmodal eval` on a tiny real-architecture model and rows written here: what is scored, what is skipped, the
metrics against their definitions, and a stopped run resumed."""

import base64
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import soundfile

from mmmmodal_hf.evaluation import EvalSettings, Server, evaluate, recompute
from mmmmodal_hf.evaluation.metrics import chosen_option, exact_match, group_metrics, normalise, token_f1

from json_double import JsonHandler
from tiny_parts import random_clip, random_image

pytest.importorskip("sacrebleu")


def write_rows(folder: Path) -> Path:
    """Kinds in two languages, a multi-turn row, a published-format row, a transcription, a multiple-choice row, a
    row with a missing file (line 6) and one without an answer (line 7)."""
    random_image(1).save(folder / "a.png")
    soundfile.write(folder / "hello.wav", random_clip(2), 16000)
    rows = [
        {"kind": "colour", "language": "en", "messages": [
            {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "And the shape?"},
            {"role": "assistant", "content": "A circle."}]},
        {"kind": "colour", "language": "ms", "conversations": [
            {"role": "user", "content": "<image> </image> Apa warna ini?"},
            {"role": "assistant", "content": "Biru."}], "filename": ["a.png"]},
        {"kind": "transcription", "language": "en", "task": "transcription", "messages": [
            {"role": "user", "content": [{"type": "audio", "path": "hello.wav"}, {"type": "text", "text": "Transcribe."}]},
            {"role": "assistant", "content": "hello world"}]},
        {"kind": "choice", "language": "ms", "choices": ["merah", "biru", "hijau"], "messages": [
            {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "A, B atau C?"}]},
            {"role": "assistant", "content": "B"}]},
        {"kind": "colour", "language": "en", "messages": [
            {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]},
        {"kind": "colour", "language": "en", "messages": [
            {"role": "user", "content": [{"type": "image", "path": "gone.png"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": "Red."}]},
        {"kind": "colour", "language": "en", "messages": [{"role": "user", "content": "Only a question?"}]},
    ]  # fmt: skip
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("eval_rows"))


def settings(base_folder, rows, **overrides) -> EvalSettings:
    return EvalSettings(
        model=str(base_folder), data=[str(rows)], **{"max_new_tokens": 6, "batch_size": 2, **overrides}
    )


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_every_turn_is_scored_and_bad_rows_are_counted(base_folder, rows, tmp_path):
    result = evaluate(settings(base_folder, rows), tmp_path, say=lambda _: None)
    predicted = lines(tmp_path)
    assert [(p["line"], p["turn"]) for p in predicted] == [(1, 1), (1, 2), (2, 1), (3, 1), (4, 1), (5, 1)]
    assert {p["file"] for p in predicted} == {str(rows)}
    assert result["overall"]["exact_match"]["n"] == 6
    assert result["overall"]["wer"]["n"] == 1 and result["overall"]["choice_accuracy"]["n"] == 1
    assert set(result["by_language"]) == {"en", "ms"} and result["by_kind"]["colour"]["exact_match"]["n"] == 4
    skipped = {s["where"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {f"{rows}:6", f"{rows}:7"}
    assert "gone.png" in skipped[f"{rows}:6"] and "no assistant turn" in skipped[f"{rows}:7"]
    assert recompute(tmp_path) == {key: result[key] for key in ("overall", "by_kind", "by_language")}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["overall"] == result["overall"] and saved["settings"]["max_new_tokens"] == 6
    assert saved["versions"]["transformers"] and len(saved["data"][0]["sha256"]) == 64
    assert "| colour |" in (tmp_path / "report.md").read_text() and (tmp_path / "report.png").stat().st_size > 0


def test_a_row_whose_text_the_template_refuses_is_skipped_and_its_batch_answered(base_folder, tmp_path):
    """Found: a row whose text held a slot token (or a tag in a text block) ended the whole run with a traceback from
    its batch's template; it is skipped, named, and the rows beside it in the batch are answered."""
    random_image(1).save(tmp_path / "a.png")
    image = {"type": "image", "path": "a.png"}
    rows = [[{"type": "text", "text": "Colour?"}, image], "Hi <audio_slot> there", [{"type": "text", "text": "Is <image> it?"}, image], "Hello"]  # fmt: skip
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": content},
                                                     {"role": "assistant", "content": "Blue."}]}) + "\n"
                            for content in rows))  # fmt: skip
    result = evaluate(settings(base_folder, data, batch_size=4), tmp_path / "out", say=lambda _: None)
    assert [p["line"] for p in lines(tmp_path / "out")] == [1, 4]
    skipped = {s["where"]: s["reason"] for s in result["skipped"]}
    assert skipped == {
        f"{data}:2": "Message 1 (user) holds <audio_slot> tokens, which the processor writes; give each "
        "medium as its own block",
        f"{data}:3": "Message 1 (user) holds the tag <image> in its text; give each medium as an image, "
        "audio or video block",
    }


def test_last_turns_only(base_folder, rows, tmp_path):
    evaluate(settings(base_folder, rows, turns="last"), tmp_path, say=lambda _: None)
    assert [(p["line"], p["turn"]) for p in lines(tmp_path)] == [(1, 2), (2, 1), (3, 1), (4, 1), (5, 1)]


def test_a_stopped_run_resumes_to_the_same_result(base_folder, rows, tmp_path):
    straight = evaluate(settings(base_folder, rows), tmp_path / "straight", say=lambda _: None)
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "straight", stopped)
    kept = (stopped / "predictions.jsonl").read_text().splitlines(keepends=True)[:2]
    (stopped / "predictions.jsonl").write_text("".join(kept) + '{"file": "cut off by a ki')  # killed mid-line
    said = []
    resumed = evaluate(settings(base_folder, rows), stopped, say=said.append)
    assert said == ["resuming: 2 of 7 turns already predicted"]
    assert lines(stopped) == lines(tmp_path / "straight")
    assert {k: resumed[k] for k in ("overall", "by_kind", "skipped")} == {
        k: straight[k] for k in ("overall", "by_kind", "skipped")
    }
    said.clear()
    evaluate(settings(base_folder, rows, max_new_tokens=4), stopped, say=said.append)
    assert said == ["settings changed (max_new_tokens): starting afresh"]


def test_a_dataset_saved_to_disk_is_scored_as_the_file_it_came_from(base_folder, tmp_path):
    """A folder `datasets`' `save_to_disk` wrote is data as a file is (`mmmmodal_hf.data.load_rows`). One table
    needs one shape of row: a message's text as a text block, as in the rows with media."""
    import datasets

    rows = write_rows(tmp_path)
    from_file = evaluate(settings(base_folder, rows), tmp_path / "file", say=lambda _: None)
    table = []
    for row in map(json.loads, rows.read_text().splitlines()):
        for message in row.get("messages", []):
            if isinstance(message["content"], str):
                message["content"] = [{"type": "text", "text": message["content"]}]
        table.append({key: row.get(key) for key in ("kind", "language", "messages", "conversations", "filename")})
    datasets.Dataset.from_list(table).save_to_disk(str(tmp_path / "saved"))
    saved = evaluate(settings(base_folder, tmp_path / "saved"), tmp_path / "out", say=lambda _: None)
    assert [p["prediction"] for p in lines(tmp_path / "out")] == [p["prediction"] for p in lines(tmp_path / "file")]
    assert {p["file"] for p in lines(tmp_path / "out")} == {str(tmp_path / "saved")}
    assert sorted(s["where"] for s in saved["skipped"]) == [f"{tmp_path / 'saved'}:6", f"{tmp_path / 'saved'}:7"]
    assert saved["overall"]["exact_match"] == from_file["overall"]["exact_match"]
    assert len(json.loads((tmp_path / "out" / "metrics.json").read_text())["data"][0]["sha256"]) == 64


def test_metric_definitions():
    assert normalise("  Blue.\n") == "blue" and normalise("“Biru,” katanya.") == "biru katanya"
    assert exact_match("blue", "Blue.") == 1.0 and exact_match("Blue sky", "Blue.") == 0.0
    assert token_f1("the blue sky", "blue sky today") == pytest.approx(2 / 3)
    choices = ["merah", "biru", "hijau"]
    assert [chosen_option(a, choices) for a in ("B", "(c) hijau", "2.", "Ia biru.", "merah atau biru", "D")] == [
        1, 2, 1, 1, None, None,
    ]  # fmt: skip
    turns = [{"prediction": "hello word", "reference": "hello world", "transcription": True, "scores": {}}]
    assert group_metrics(turns, ("wer", "cer"))["wer"] == {"value": 0.5, "n": 1}


def test_the_command(base_folder, rows, tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mmmmodal")), "eval", str(base_folder), "--data", str(rows),
         "--output-dir", str(tmp_path), "--turns", "last", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped: 2" in done.stdout and (tmp_path / "metrics.json").exists()


class StandInJudge(JsonHandler):
    """The network edge: an OpenAI-compatible judge that rates every answer 4 and keeps the prompts it was sent."""

    prompts: list[str] = []

    def do_GET(self):
        self.send_json({"data": [{"id": "judge-model"}]})

    def do_POST(self):
        StandInJudge.prompts.append(self.read_json()["messages"][0]["content"])
        reply = "Explanation: close to the reference.\nRating: 4"
        self.send_json({"choices": [{"message": {"role": "assistant", "content": reply}}]})


def test_a_judge_rates_every_answer(base_folder, rows, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = Server(f"http://127.0.0.1:{server.server_port}/v1")
        result = evaluate(settings(base_folder, rows, turns="last"), tmp_path, say=lambda _: None, judge=judge)
    finally:
        server.shutdown()
    assert judge.model == "judge-model" and result["judge"]["model"] == "judge-model"
    assert result["overall"]["judge"] == {"value": 4.0, "n": 5}
    assert all(p["scores"]["judge"] == 4 for p in lines(tmp_path))
    transcription = next(p for p in StandInJudge.prompts if "[Reference Answer]\nhello world" in p)
    assert "[Question]\nTranscribe." in transcription and "Rating: (int)" in transcription


def test_a_server_that_cannot_be_reached_is_one_line_naming_it(rows, tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mmmmodal")), "eval", "served-model", "--data", str(rows),
         "--output-dir", str(tmp_path), "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("mmmmodal eval: cannot reach http://127.0.0.1:9/v1"), done.stderr


def test_the_servers_prompt_carries_a_rows_media_from_files_and_from_base64(tmp_path):
    """The openai and vllm backends' parts: files and a row's base64 media both as base64 data (found: a base64
    medium, now read by training's row reader, failed as a path)."""
    from mmmmodal_hf.evaluation.remote import openai_prompt
    from mmmmodal_hf.evaluation.turns import scored_turns

    random_image(1).save(tmp_path / "one.png")
    soundfile.write(tmp_path / "beep.wav", random_clip(2), 16000)
    files = {"image": (tmp_path / "one.png").read_bytes(), "audio": (tmp_path / "beep.wav").read_bytes()}
    as_text = {kind: base64.b64encode(data).decode() for kind, data in files.items()}
    for name, blocks in (("paths", [{"path": "one.png"}, {"path": "beep.wav"}]),
                         ("base64", [{"base64": as_text["image"]}, {"base64": as_text["audio"]}])):  # fmt: skip
        content = [{"type": "image", **blocks[0]}, {"type": "audio", **blocks[1]}, {"type": "text", "text": "Apa?"}]
        row = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "Bulat."}]}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
        (turn,), skipped = scored_turns([str(tmp_path / f"{name}.jsonl")])
        image, audio, text = openai_prompt(turn)[0]["content"]
        assert not skipped and text == {"type": "text", "text": "Apa?"}
        assert base64.b64decode(image["image_url"]["url"].split(",")[1]) == files["image"]
        assert base64.b64decode(audio["input_audio"]["data"]) == files["audio"]
