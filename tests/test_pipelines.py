"""transformers' own pipelines load a saved folder (`trust_remote_code`) and answer as `generate` does.

Run where a Hub user runs them: a process that cannot import mmmmodal_hf, so the folder's own code
and `auto_map` serve. The "any-to-any" and "image-text-to-text" pipelines refuse to start without
torchvision when a model takes images (`requires_backends(self, "torchvision")`), though nothing
of ours uses it (the SigLIP image processor here is the PIL one). PyPI's torchvision is a CUDA build
that fails to import beside this machine's CPU torch, so the child reports torchvision as present
for that one check, and for nothing else.
"""

import json
import textwrap

import soundfile

from fresh_process import run_in_fresh_process
from tiny_parts import random_clip, random_image
from video_files import write_video

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, torch
    import transformers.utils.import_utils as import_utils
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor, pipeline

    # The pipelines' torchvision check, satisfied without it (see the test module's docstring).
    import_utils.BACKENDS_MAPPING["torchvision"] = (lambda: True, import_utils.BACKENDS_MAPPING["torchvision"][1])

    folder, work, out_file = sys.argv[1:4]
    request = json.loads(open(f"{work}/request.json").read())
    chats, steps = request["chats"], request["steps"]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    results = {name: {} for name in chats}
    for name, chat in chats.items():
        inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        results[name]["generate"] = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    for task in ("any-to-any", "image-text-to-text"):
        pipe = pipeline(task, model=folder, trust_remote_code=True)
        assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
        for name, chat in chats.items():
            out = pipe(text=chat, max_new_tokens=steps, return_full_text=False,
                       generate_kwargs={"do_sample": False, "min_new_tokens": steps})
            results[name][task] = out[0]["generated_text"]
            results[name][task + " class"] = type(pipe.model).__name__
    open(f"{work}/replies.json", "w").write(json.dumps(results))
    save_file({"done": torch.ones(1)}, out_file)
    """
)


def test_any_to_any_and_image_text_to_text_pipelines_answer_as_generate(saved_folder, tmp_path):
    random_image(5).save(tmp_path / "shape.png")
    soundfile.write(tmp_path / "beep.wav", random_clip(6), 16000)
    video = write_video(tmp_path / "beeps.mp4", seconds=2.0)
    chats = {
        "image and clip": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": str(tmp_path / "shape.png")},
                    {"type": "audio", "path": str(tmp_path / "beep.wav")},
                    {"type": "text", "text": "Apa warna bentuk ini, dan berapa bip?"},
                ],
            }
        ],
        "video with its soundtrack": [
            {"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "Bila bip?"}]}
        ],
    }
    (tmp_path / "request.json").write_text(json.dumps({"chats": chats, "steps": 8}))
    run_in_fresh_process(PIPELINE_SCRIPT, saved_folder, tmp_path)
    for name, replies in json.loads((tmp_path / "replies.json").read_text()).items():
        assert replies["generate"].strip(), f"{name}: the reference reply is empty"
        assert replies["any-to-any"] == replies["generate"], name
        assert replies["image-text-to-text"] == replies["generate"], name
        assert replies["any-to-any class"] == replies["image-text-to-text class"] == "MMMModalForConditionalGeneration"
