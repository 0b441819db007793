"""The lmms-eval plugin (`lmms-eval --model mmmmodal`), run as a user runs it: lmms-eval's own command in a real
process, on a task defined over local files (image, audio and text questions; one image that cannot be read).
lmms-eval and its torchvision need a venv of their own (`.ci/install-lmms-eval-venv`); elsewhere this file skips."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import soundfile
import torch
from transformers import AutoModel, AutoProcessor

from mmmmodal_hf.evaluation.run import EvalSettings, Unanswered, answer_prompts

from tiny_parts import random_clip, random_image

pytest.importorskip("lmms_eval", reason="lmms-eval runs in its own venv: bash .ci/install-lmms-eval-venv")

QUESTIONS = [  # (image or video, audio, question); broken.png cannot be read
    ("shape.png", None, "What colour is the shape?"),
    (None, "beep.wav", "How many beeps?"),
    ("shape.png", "beep.wav", "Apa yang anda lihat dan dengar?"),
    (None, None, "Say hello."),
    ("broken.png", None, "What is this?"),
    ("clip.mp4", None, "Which colour came first?"),  # a video task: its frames and its soundtrack
]

TASK_UTILS = """
import soundfile
from PIL import Image


def doc_to_messages(doc):
    content = []
    if doc["image"]:
        kind = "video" if doc["image"].endswith(".mp4") else "image"
        content.append({"type": kind, "url": Image.open(doc["image"]) if doc["image"].endswith("shape.png") else doc["image"]})
    if doc["audio"]:
        array, rate = soundfile.read(doc["audio"], dtype="float32")
        content.append({"type": "audio", "url": {"array": array, "sampling_rate": rate}})
    content.append({"type": "text", "text": doc["question"]})
    return [{"role": "user", "content": content}]


def doc_to_visual(doc):
    visuals = [Image.open(doc["image"]) if doc["image"].endswith("shape.png") else doc["image"]] if doc["image"] else []
    if doc["audio"]:
        array, rate = soundfile.read(doc["audio"], dtype="float32")
        visuals.append({"array": array, "sampling_rate": rate})
    return visuals


def doc_to_text(doc):
    return doc["question"]
"""


def _media(folder):
    from video_files import write_video

    write_video(folder / "clip.mp4", audio_rate=22050, channels=2)
    random_image(1, size=(48, 40)).save(folder / "shape.png")
    (folder / "broken.png").write_bytes(b"not a png")
    soundfile.write(folder / "beep.wav", random_clip(2, seconds=0.7, rate=22050), 22050)


def _tasks(folder, references: list[str], stop: str):
    """Two tasks over local files, as lmms-eval's `--include_path` reads them: the same questions, their media given
    by `doc_to_messages` (task mmmmodal_messages) or by `doc_to_visual` (task mmmmodal_visuals)."""
    with open(folder / "data.jsonl", "w") as rows:
        for (image, audio, question), answer in zip(QUESTIONS, references):
            rows.write(json.dumps({"image": image and str(folder / image), "audio": audio and str(folder / audio),
                                   "question": question, "answer": answer}) + "\n")  # fmt: skip
    (folder / "mmmmodal_utils.py").write_text(TASK_UTILS)
    for name, media_from in (("mmmmodal_messages", "doc_to_messages"), ("mmmmodal_visuals", "doc_to_visual")):
        (folder / f"{name}.yaml").write_text(
            textwrap.dedent(f"""\
            task: {name}
            dataset_path: json
            dataset_kwargs:
              data_files: {folder / "data.jsonl"}
            test_split: train
            output_type: generate_until
            {media_from}: !function mmmmodal_utils.{media_from}
            doc_to_text: !function mmmmodal_utils.doc_to_text
            doc_to_target: answer
            generation_kwargs:
              max_new_tokens: 6
              temperature: 0
              do_sample: false
              until: [{json.dumps(stop)}]
            metric_list:
              - metric: exact_match
                aggregation: mean
                higher_is_better: true
            metadata:
              version: 0.0
            """)
        )


def _expected_answers(folder, model_folder) -> list[str]:
    """What the package's own evaluation code answers to the same questions (greedy, 6 new tokens)."""
    model = AutoModel.from_pretrained(model_folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_folder, trust_remote_code=True)
    prompts = []
    for image, audio, question in (q for q in QUESTIONS if q[0] != "broken.png"):
        if image and image.endswith(".mp4"):
            prompts.append([{"role": "user", "content": [{"type": "video", "video": str(folder / image)},
                                                         {"type": "text", "text": question}]}])  # fmt: skip
            continue
        images, clips = processor.load_media([folder / image] if image else [], [folder / audio] if audio else [])
        content = [{"type": "image", "image": i} for i in images] + [{"type": "audio", "audio": c} for c in clips]
        prompts.append([{"role": "user", "content": [*content, {"type": "text", "text": question}]}])
    answers = answer_prompts(
        model, processor, prompts, EvalSettings(model=str(model_folder), data=[], max_new_tokens=6)
    )
    assert not any(isinstance(answer, Unanswered) for answer in answers)
    return answers


@pytest.fixture(scope="module")
def task(tmp_path_factory, base_folder):
    """The task's media, the package's own answers (cut at the task's `until`) and that stop string."""
    folder = tmp_path_factory.mktemp("lmms_eval_task")
    _media(folder)
    answers = _expected_answers(folder, base_folder)
    stop = answers[1][len(answers[1]) // 2 :][:2]  # the task's `until`: from the middle of one answer
    expected = [answer.split(stop)[0].strip() for answer in answers]
    assert expected[1] != answers[1]
    return folder, expected, stop


@pytest.mark.parametrize(
    "interface, tasks", [("chat", ["mmmmodal_messages", "mmmmodal_visuals"]), ("simple", ["mmmmodal_visuals"])]
)
def test_lmms_eval_runs_local_tasks_through_the_plugin(tmp_path, base_folder, task, interface, tasks):
    folder, expected, stop = task
    # Three references are the package's own answers, so lmms-eval's exact match must come to 3 of 6.
    _tasks(folder, [expected[0], "not this", expected[2], "nor this", "nothing", expected[4]], stop)
    output = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "mmmmodal", "--model_args", f"pretrained={base_folder}",
         "--tasks", ",".join(tasks), "--include_path", str(folder), "--batch_size", "2", "--device", "cpu",
         "--output_path", str(output), "--log_samples", *(["--force_simple"] if interface == "simple" else [])],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    said = run.stdout + run.stderr
    assert run.returncode == 0 and "Error during evaluation" not in said, said[-3000:]  # lmms-eval exits 0 on errors
    (results_file,) = output.rglob("*_results.json")
    for name in tasks:
        (samples_file,) = output.rglob(f"*_samples_{name}.jsonl")
        results = json.loads(results_file.read_text())["results"][name]
        samples = sorted(
            (json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
        )
        answers = [sample["filtered_resps"] for sample in samples]
        assert answers == [*expected[:4], "", expected[4]], (
            name
        )  # the unreadable image: answered with nothing, and said so
        assert f"mmmmodal answers task {name}, document 4 with nothing" in said and "not a readable image" in said
        assert [float(sample["exact_match"]) for sample in samples] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
        assert results["exact_match,none"] == pytest.approx(0.5)


def test_model_args_that_are_no_whole_numbers_are_named(base_folder):
    """lmms-eval hands `--model_args` over as text: `max_new_tokens=abc` said only `invalid literal for int()`."""
    from mmmmodal_hf.evaluation.lmms_eval_model import MMMModal

    for args, said in [({"max_new_tokens": "abc"}, "max_new_tokens must be a whole number above 0; got 'abc'"),
                       ({"batch_size": "0"}, "batch_size must be a whole number above 0; got '0'"),
                       ({"seed": "-1"}, "seed must be a whole number; got '-1'")]:  # fmt: skip
        with pytest.raises(ValueError) as refused:
            MMMModal(pretrained=str(base_folder), **args)
        assert str(refused.value) == f"mmmmodal: --model_args {said}"


def test_video_model_args_read_videos_as_mmmmodal_evals_flags_do(tmp_path, base_folder, task):
    """`--model_args pretrained=...,num_frames=2,pool_frames=true`, as `mmmmodal eval --num-frames 2 --pool-frames`
    (found: the plugin read every video at the processor's defaults, with no way to ask for more or fewer frames)."""
    folder, expected, stop = task
    options = {"num_frames": 2, "pool_frames": True}
    model = AutoModel.from_pretrained(base_folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(base_folder, trust_remote_code=True)
    (video,) = processor.load_videos([folder / "clip.mp4"], **options)
    prompt = [
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": QUESTIONS[5][2]}]}
    ]
    settings = EvalSettings(model=str(base_folder), data=[], max_new_tokens=6, video_options=options)
    (answer,) = answer_prompts(model, processor, [prompt], settings)
    answer = answer.split(stop)[0].strip()
    assert len(video.frames) == 2 and answer != expected[4]  # the options change what the model is given
    references = ["-"] * 5 + [answer]
    _tasks(folder, references, stop)
    output = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "mmmmodal", "--model_args",
         f"pretrained={base_folder},num_frames=2,pool_frames=true", "--tasks", "mmmmodal_messages",
         "--include_path", str(folder), "--device", "cpu", "--output_path", str(output), "--log_samples"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    said = run.stdout + run.stderr
    assert run.returncode == 0 and "Error during evaluation" not in said, said[-3000:]
    (samples_file,) = output.rglob("*_samples_mmmmodal_messages.jsonl")
    video_sample = next(s for s in map(json.loads, samples_file.read_text().splitlines()) if s["doc_id"] == 5)
    assert video_sample["filtered_resps"] == answer and float(video_sample["exact_match"]) == 1.0


def test_video_model_args_that_cannot_be_used_are_named(base_folder):
    from mmmmodal_hf.evaluation.lmms_eval_model import MMMModal

    for args, said in [({"num_frames": "0"}, "num_frames must be a whole number above 0; got '0'"),
                       ({"fps": "fast"}, "fps must be a positive number; got 'fast'"),
                       ({"fps": 0}, "fps must be a positive number; got 0.0"),
                       ({"num_frames": 4, "fps": 1.0}, "give num_frames or fps, not both"),
                       ({"pool_frames": "maybe"}, "pool_frames must be true or false; got 'maybe'")]:  # fmt: skip
        with pytest.raises(ValueError) as refused:
            MMMModal(pretrained=str(base_folder), **args)
        assert str(refused.value) == f"mmmmodal: --model_args {said}"
