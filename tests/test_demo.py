"""`mmmmodal demo --quick`: the whole pipeline on the synthetic world, as CI runs it."""

import json
import re
import subprocess
import sys

import torch
from PIL import Image

from mmmmodal_hf.conversion.push import main as push
from mmmmodal_hf.demo.command import one_and_several
from mmmmodal_hf.demo.run import ANSWER_TOKENS, accuracy_table, place_among, quick_checks, verdict
from mmmmodal_hf.demo.tokenizer import trained_tokenizer_folder
from mmmmodal_hf.demo.video import video_quick_checks
from mmmmodal_hf.demo.video_world import VIDEO_KINDS, VIDEO_MOMENTS, VideoFact, ask_video, make_video_split
from mmmmodal_hf.demo.world import ASKED_MEDIUM, CHANCE, EASY_KINDS, KINDS, make_split
from mmmmodal_hf.evaluation import main as evaluate
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder


def test_quick_demo_learns_saves_and_reloads(tmp_path, capsys):
    output = tmp_path / "demo"
    # The demo's torch threads are this process's: its 2 when the suite runs alone, 1 per worker under `pytest -n 2`
    # (2 beside the other worker's busy core, its threads waited on each other: 700 s against 220 s alone).
    threads = ["--threads", str(torch.get_num_threads())]
    completed = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "demo", "--quick", *threads, "--output-dir", str(output)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    # The quick run states its own checks and whether they passed, not the full run's 90% target.
    assert "quick run: 4 of 4 checks passed" in completed.stdout and "NOT reached" not in completed.stdout
    assert "one medium     several" in completed.stdout
    assert "asked about one of several media (colour, shape, pitch, beeps, follow-up), by its place:" in (
        completed.stdout
    )
    report = output / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    # The table's columns are explained where it prints, and a kind no better than chance is named under it.
    assert "well-formed: some valid answer of the" in completed.stdout
    guessing = [kind for kind in KINDS if metrics["accuracy"][kind]["accuracy"] <= metrics["accuracy"][kind]["chance"]]
    named = next((line for line in completed.stdout.splitlines() if line.startswith("no better than chance")), "")
    assert all(f"{kind} (" in named for kind in guessing) and bool(named) == bool(guessing), named
    # Training shows its loss on the progress bar, not a dictionary per log; DeepSpeed says nothing of the CPU.
    assert "{'loss'" not in completed.stdout + completed.stderr
    assert "Setting accelerator to CPU" not in completed.stdout + completed.stderr
    assert "sample_chats.md" in completed.stdout
    assert metrics["tokenizer"] == "mistral" and metrics["vocabulary"] == 32006
    assert set(metrics["accuracy"]) >= set(KINDS)
    # Each kind is also split by how many media of the asked type its conversations held.
    for kind in KINDS:
        groups = metrics["accuracy"][kind]["by_candidates"]
        assert sum(group["n"] for group in groups.values()) == metrics["accuracy"][kind]["n"], (kind, groups)
    minutes = metrics["timings"]["total_s"] / 60
    assert metrics["target_minutes"] == 10 and metrics["within_time"] == (minutes <= 10)
    assert metrics["reached_target"] == (metrics["reached_accuracy"] and metrics["within_time"])
    pooled = metrics["accuracy"]["several_by_position"]
    assert set(pooled) <= {"first", "middle", "last"} and sum(cell["n"] for cell in pooled.values()) > 0
    # The quick run's checks, as computed here from the metrics: the towers' stand-in pretraining made them
    # see and hear the world (fresh media), the loss fell, the easy kinds' answers are well formed and
    # well above chance. (The 90% target on every kind needs the full run; README, limits.)
    assert metrics["quick_checks"] == quick_checks(metrics) and all(metrics["quick_checks"].values())
    towers = {report["tower"]: report["accuracy"] for report in metrics["encoders"]}
    assert towers["vision"]["colour"] >= 0.95 and towers["audio"]["pitch"] >= 0.95, towers
    easy = {kind: metrics["accuracy"][kind] for kind in EASY_KINDS}
    assert sum(row["accuracy"] for row in easy.values()) >= 2 * sum(CHANCE[kind] for kind in EASY_KINDS), easy
    # The fresh-process reload used the folder's own code, and answered every turn of the sample chats.
    assert metrics["reloaded_from"].startswith("transformers_modules.")
    chats = json.loads((report / "sample_chats.json").read_text())
    assert chats and all(m["content"] for chat in chats for m in chat if m["role"] == "assistant")
    assert Image.open(report / "report.png").size == (1000, 420)
    assert len((report / "heldout_answers.jsonl").read_text().splitlines()) == metrics["settings"]["eval_per_kind"] * 9
    # The page's examples, asked of the quick run's model: the kinds it has learned best answer right, and every
    # answer is one of its world's answers (the full run's model answers all four right: docs/demo.md).
    answers = example_answers(metrics["model_folder"])
    assert answers[0] == "Blue." and answers[2] == "Audio 1: high. Audio 2: low. So audio 1.", answers
    assert answers[1].endswith(".") and answers[3].endswith("."), answers
    # `mmmmodal eval` on the held-out rows gives the accuracies the demo reports: the demo scores through it.
    by_kind = eval_by_kind(metrics["model_folder"], output / "world" / "heldout" / "data.jsonl", tmp_path / "eval")
    assert {kind: by_kind[kind]["exact_match"]["value"] for kind in KINDS} == {
        kind: metrics["accuracy"][kind]["accuracy"] for kind in KINDS
    }
    # The saved model is a Hub repo as it stands: `mmmmodal push --dry-run` takes it (no pickles, a card, and it
    # loads in a fresh process with its own code).
    capsys.readouterr()
    assert push([metrics["model_folder"], "--repo-id", "you/demo", "--dry-run"]) == 0
    assert "README.md" in json.loads(capsys.readouterr().out.splitlines()[1])
    # Media stand unlabelled, as a chat user sends them: each user turn's only text is its question.
    assert metrics["settings"]["media_labels"] == 0
    for line in (output / "world" / "train" / "data.jsonl").read_text().splitlines()[:50]:
        for turn in json.loads(line)["messages"]:
            if turn["role"] == "user":
                assert [block["type"] for block in turn["content"]].count("text") == 1, turn
    # The LM's short-range RoPE (the demo's setting, not Llama's 10000) with half of each head's pairs
    # slowed 1000-fold (position-free, Llama 3's scaling) and its QK-norm layout travel with the saved
    # folder, and the fresh-process reload built that LM from it.
    saved = json.loads((output / "model" / "config.json").read_text())
    rope = saved["text_config"]["rope_parameters"]
    assert rope["rope_theta"] == metrics["settings"]["rope_theta"] == 100.0
    assert metrics["settings"]["position_free_pairs"] == 8
    assert (rope["rope_type"], rope["factor"]) == ("llama3", 1000.0)
    assert saved["text_config"]["model_type"] == metrics["settings"]["lm"] == "qwen3"
    assert metrics["reloaded_language_model"] == "Qwen3Model"
    # `--video`: the trained model's third stage, videos with their soundtracks beside rows of its own world, then
    # every kind scored again and the saved folder reloaded in a fresh process to answer questions about videos.
    video = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "demo", "--video", "--quick", *threads, "--output-dir", str(output)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert video.returncode == 0, video.stderr[-4000:]
    assert "quick run: 2 of 2 checks passed" in video.stdout, video.stdout[-3000:]
    watched = json.loads((output / "video" / "report" / "metrics.json").read_text())
    assert watched["kinds"] == [*VIDEO_KINDS, *KINDS] and watched["quick_checks"] == video_quick_checks(watched)
    assert all(watched["accuracy"][kind]["n"] == metrics["settings"]["eval_per_kind"] for kind in watched["kinds"])
    assert all(f"{kind} " in video.stdout for kind in VIDEO_KINDS)
    chats = json.loads((output / "video" / "report" / "sample_chats.json").read_text())
    assert [chat[0]["content"][0]["type"] for chat in chats] == ["video", "video"]
    assert all(chat[-1]["role"] == "assistant" and chat[-1]["content"] for chat in chats)
    assert watched["reloaded_from"].startswith("transformers_modules.")
    # `mmmmodal eval` on the held-out video rows gives the accuracies the video stage reports.
    heldout_videos = output / "video" / "world" / "heldout" / "data.jsonl"
    by_kind = eval_by_kind(watched["model_folder"], heldout_videos, tmp_path / "eval_video")
    assert {kind: by_kind[kind]["exact_match"]["value"] for kind in VIDEO_KINDS} == {
        kind: watched["accuracy"][kind]["accuracy"] for kind in VIDEO_KINDS
    }
    # (Without a finished `mmmmodal demo` in the folder, --video says what to run first: tests/test_cli_errors.py.)


def eval_by_kind(model_folder, rows, output_dir) -> dict:
    """`mmmmodal eval`'s metrics per kind for the last turn of each row, predicted as the demo predicts."""
    status = evaluate([str(model_folder), "--data", str(rows), "--turns", "last", "--batch-size", "32",
                       "--max-new-tokens", str(ANSWER_TOKENS), "--output-dir", str(output_dir)])  # fmt: skip
    assert status == 0
    return json.loads((output_dir / "metrics.json").read_text())["by_kind"]


def test_trained_tokenizer_when_mistral_common_is_missing(tmp_path):
    from transformers import AutoTokenizer

    texts = ["Apakah warna bentuk dalam gambar 1?", "What colour is the shape in image 2?", "Merah.", "Red."] * 50
    tokenizer = AutoTokenizer.from_pretrained(trained_tokenizer_folder(tmp_path, texts, vocab_size=300))
    ids = tokenizer("What colour is the shape in image 2?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(tokenizer) <= 300
    assert tokenizer.decode(ids, skip_special_tokens=True) == "What colour is the shape in image 2?"


def test_every_answer_fits_what_evaluation_generates(tmp_path):
    from transformers import AutoTokenizer

    # Evaluation and the sample chats stop after ANSWER_TOKENS: a longer answer would be cut and scored wrong.
    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer_folder(tmp_path / "tokenizer"))
    answers = {c.answer for c in make_split(tmp_path / "world", 900, seed=0, images=60, clips=40)}
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    assert longest + 1 <= ANSWER_TOKENS  # and the end-of-sequence token


def test_video_world_shows_each_colour_and_sounds_its_beep_where_the_answers_say(tmp_path):
    """The processor's default 8 frames of a demo video show the colours its facts list, and the beep sounds in the
    half second after the frame its answer names (AAC's start delay included)."""
    import numpy as np

    from mmmmodal_hf.demo.world import COLOURS, SAMPLE_RATE
    from mmmmodal_hf.media_mmmmodal import load_video

    rows = make_video_split(tmp_path, 12, seed=5, videos=6)
    assert {(row.kind, row.language) for row in rows} == {(k, lang) for k in VIDEO_KINDS for lang in ("en", "ms")}
    facts = {}
    for row in rows:
        video = load_video(tmp_path / row.turns[0]["content"][0]["path"])
        assert len(video.frames) == VIDEO_MOMENTS and video.times == [k / 2 for k in range(VIDEO_MOMENTS)]
        shown = []
        for frame in video.frames:
            pixels = np.asarray(frame).reshape(-1, 3).astype(float)
            shape = pixels[pixels.min(1) < 150].mean(0)  # the shape's pixels: the background is light
            shown.append(min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name][0]) - shape).sum()))
        halves = np.abs(video.soundtrack[: SAMPLE_RATE * 4]).reshape(VIDEO_MOMENTS, -1).max(1)
        beep = int(halves.argmax())
        assert halves[beep] > 0.3 and np.delete(halves, beep).max() < 0.1, halves
        # The row's answer, recomputed from what was decoded.
        fact = VideoFact(row.turns[0]["content"][0]["path"], "circle", shown, beep)
        assert ask_video(row.kind, row.language, fact) == (row.turns[0]["content"][1]["text"], row.answer)
        facts[row.turns[0]["content"][0]["path"]] = (shown, beep)
    assert len(facts) >= 4 and any(len(set(shown)) > 1 for shown, _ in facts.values())


def example_answers(folder) -> list[str]:
    """Greedy answers of the model in `folder` to the web page's examples, each a fresh chat, as the page asks them."""
    from transformers import AutoModel, AutoProcessor

    from mmmmodal_hf.session import MMMModalChatSession
    from mmmmodal_hf.web import example_turns, media_kind

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    answers = []
    for text, files in example_turns():
        images = [path for path in files if media_kind(path) == "image"]
        audio = [path for path in files if media_kind(path) == "audio"]
        answers.append(MMMModalChatSession(model, processor, max_new_tokens=ANSWER_TOKENS).send(text, images, audio))
    return answers


def test_the_shipped_examples_ask_as_the_demo_world_asks(tmp_path):
    """The README's and the page's example questions are questions of the world the demo's model learned (found:
    examples phrased otherwise got `Audio 3: low. Image 1.`), and the README's chat uses them."""
    from pathlib import Path

    from mmmmodal_hf.web import example_turns

    asked = {
        block["text"]
        for conversation in make_split(tmp_path / "world", 900, seed=0, images=60, clips=40)
        for turn in conversation.turns
        if turn["role"] == "user" and isinstance(turn["content"], list)
        for block in turn["content"]
        if block.get("type") == "text"
    }
    examples = [text for text, _ in example_turns()]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    readme_questions = re.findall(r'you> ([^/\n][^\n]*?)\n|-p "([^"]+)"', readme)
    readme_questions = [one or other for one, other in readme_questions]
    assert len(examples) == 4 and len(readme_questions) >= 2
    for question in [*examples, *readme_questions]:
        assert question in asked, question


def test_accuracy_splits_each_kind_by_how_many_media_it_could_mean():
    """One colour question with a single image (right), two with three images (one right)."""
    results = [
        {"kind": "image_colour", "language": "en", "answer": "Red.", "correct": True, "candidates": 1},
        {"kind": "image_colour", "language": "en", "answer": "Blue.", "correct": False, "candidates": 3},
        {"kind": "image_colour", "language": "ms", "answer": "Merah.", "correct": True, "candidates": 3},
    ]
    results = [dict(r, expected=r["answer"] if r["correct"] else "Green.") for r in results]
    table = accuracy_table(results, {"image_colour": {"Red.", "Blue.", "Merah."}})
    colour = table["image_colour"]
    assert colour["n"] == 3 and colour["well_formed"] == 1.0 and colour["verdict_right"] == 2 / 3
    assert colour["by_candidates"] == {"1": {"accuracy": 1.0, "n": 1}, "3": {"accuracy": 0.5, "n": 2}}
    assert one_and_several(colour["by_candidates"]) == ("100% (1)", "50% (2)")
    # Which image always has two or more images: no "one medium" cell.
    assert one_and_several({"2": {"accuracy": 0.25, "n": 4}}) == ("-", "25% (4)")
    assert table["which_image"]["by_candidates"] == {} and table["language_ms"]["accuracy"] == 1.0


def test_a_worked_answer_is_judged_by_its_verdict_too():
    assert verdict("circle: 1 square 0, 2 circle 1. Two.") == "Two."
    assert verdict("Audio 1: low. Audio 3: high. So audio 3.") == "So audio 3."
    assert verdict("Red.") == "Red."
    row = {"kind": "count_shape", "language": "en", "candidates": 2, "correct": False}
    wrong_step = dict(
        row, answer="circle: 1 circle 0, 2 circle 2. Two.", expected="circle: 1 circle 1, 2 circle 2. Two."
    )
    wrong_verdict = dict(row, answer="circle: 1 circle 1, 2 circle 1. One.", expected=wrong_step["expected"])
    count = accuracy_table([wrong_step, wrong_verdict], {"count_shape": {"One.", "Two."}})["count_shape"]
    assert count["accuracy"] == 0 and count["verdict_right"] == 0.5 and count["well_formed"] == 1.0


def test_accuracy_by_the_place_of_the_medium_asked_about(tmp_path):
    conversations = make_split(tmp_path, 90, seed=3, images=30, clips=20)
    places = {}
    for conversation in conversations:
        place = place_among(conversation.about, conversation.media_count(ASKED_MEDIUM[conversation.kind]))
        places.setdefault(place, set()).add(conversation.kind)
    # Only the kinds that point at one medium have a place, and all four places occur.
    assert places.pop(None) == {"which_image", "count_shape", "higher_clip", "image_vs_audio"}
    assert set(places) == {"only", "first", "middle", "last"}
    keys = ("kind", "language", "answer", "correct", "candidates", "position")
    results = [
        dict(zip(keys, values), expected=values[2])
        for values in [
            ("image_colour", "en", "Red.", True, 2, "first"),
            ("audio_beeps", "en", "One.", False, 3, "last"),
            ("audio_beeps", "ms", "Dua.", True, 3, "last"),
            ("audio_beeps", "ms", "Satu.", True, 1, "only"),
            ("count_shape", "en", "Two.", True, 2, None),
        ]
    ]
    table = accuracy_table(results, {})
    assert table["audio_beeps"]["by_position"] == {
        "only": {"accuracy": 1.0, "n": 1},
        "last": {"accuracy": 0.5, "n": 2},
    }
    assert table["count_shape"]["by_position"] == {}
    assert table["several_by_position"] == {"first": {"accuracy": 1.0, "n": 1}, "last": {"accuracy": 0.5, "n": 2}}


def test_the_report_picture_marks_kinds_below_chance_and_a_quick_run():
    from mmmmodal_hf.demo.report import _HEIGHT, _MARGIN, _WIDTH, BAR, BELOW_CHANCE, draw_report

    accuracy = {kind: {"accuracy": 0.95, "chance": CHANCE[kind]} for kind in KINDS}
    accuracy["which_image"]["accuracy"] = 0.2  # below its chance, 1/3
    losses = [{"stage": "align", "step": s, "loss": 9.0 - s / 10} for s in range(1, 11)]
    losses += [{"stage": "finetune", "step": s, "loss": 8.0 / s} for s in range(1, 101)]
    metrics = {"losses": losses, "accuracy": accuracy, "settings": {"quick_run": False}}
    full, quick = draw_report(metrics), draw_report({**metrics, "settings": {"quick_run": True}})
    assert full.size == (_WIDTH, _HEIGHT)
    left, right, bottom = _WIDTH // 2 + _MARGIN // 2, _WIDTH - _MARGIN // 2, _HEIGHT - _MARGIN
    width = (right - left) / len(KINDS)
    bar_colour = [full.getpixel((int(left + (i + 0.5) * width), bottom - 3)) for i in range(len(KINDS))]
    assert bar_colour[KINDS.index("which_image")] == BELOW_CHANCE
    assert {colour for i, colour in enumerate(bar_colour) if KINDS[i] != "which_image"} == {BAR}
    # The quick run's label is drawn above the loss chart; the full run's picture has none there.
    label = (_MARGIN, 0, _WIDTH // 2, 14)
    assert full.crop(label).getcolors() == [(full.crop(label).width * 14, (255, 255, 255))]
    assert len(quick.crop(label).getcolors()) > 1
    # The loss chart's step axis is numbered up to the last step (10 align + 100 finetune).
    axis = full.crop((_MARGIN, bottom + 5, _WIDTH // 2, bottom + 20))
    assert len(axis.getcolors(4096)) > 1
