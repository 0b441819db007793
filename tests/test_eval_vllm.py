"""`mmmmodal eval --backend vllm`: an offline `vllm.LLM` predicts what the transformers backend does (vLLM job)."""

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run runs this module in its vLLM venv")

from mmmmodal_hf.evaluation import EvalSettings, evaluate  # noqa: E402

from vllm_parts import ENGINE_SETTINGS, NEW_TOKENS  # noqa: E402


def test_the_vllm_backend_predicts_what_generate_does(served_folder, served_media, tmp_path):
    from video_files import write_video

    video = write_video(tmp_path / "clip.mp4", audio_rate=44100, channels=2)
    blocks = [
        {"type": "image", "path": str(served_media["wide"])},
        {"type": "audio", "path": str(served_media["long"])},
    ]
    rows = [
        {"kind": "mixed", "language": "en", "messages": [
            {"role": "user", "content": [*blocks, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "A shape and a tone."},
            {"role": "user", "content": [{"type": "audio", "path": str(served_media["beep"])}, {"type": "text", "text": "And?"}]},
            {"role": "assistant", "content": "A beep."}]},
        {"kind": "text", "language": "ms", "messages": [
            {"role": "user", "content": "Apa khabar?"}, {"role": "assistant", "content": "Baik."}]},
        {"kind": "video", "language": "en", "messages": [
            {"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "Which colour?"}]},
            {"role": "assistant", "content": "Red."}]},
        # refused by the chat template, in a batch beside rows that are answered (it ended the vLLM backend's run)
        {"kind": "text", "language": "en", "messages": [
            {"role": "user", "content": "Hi <audio_slot>"}, {"role": "assistant", "content": "Hi."}]},
    ]  # fmt: skip
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # The video read as `--num-frames 4 --pool-frames` say, both ways (the engine's media_io and processor kwargs).
    common = dict(model=str(served_folder), data=[str(data)], max_new_tokens=NEW_TOKENS, batch_size=3,
                  video_options={"num_frames": 4, "pool_frames": True})  # fmt: skip
    engine = {key: value for key, value in ENGINE_SETTINGS.items() if key != "dtype"}
    offline = evaluate(EvalSettings(**common, backend="vllm", engine_args=engine), tmp_path / "vllm", say=print)
    local = evaluate(EvalSettings(**common), tmp_path / "local", say=print)
    predicted = {
        name: [
            json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        ]
        for name in ("vllm", "local")
    }
    assert len(predicted["local"]) == 4 and predicted["vllm"] == predicted["local"]
    assert offline["overall"] == local["overall"] and offline["settings"]["backend"] == "vllm"
    assert offline["skipped"] == local["skipped"] == [{"where": f"{data}:4", "turn": 1, "reason": (
        "Message 1 (user) holds <audio_slot> tokens, which the processor writes; give each medium as its own block")}]  # fmt: skip
