"""Videos: real files written with PyAV (a known colour each second, beeps at known times, soundtracks at 44.1 kHz
stereo and 16 kHz mono, none), read by `media_mmmmodal.load_video` and laid out by the processor as the published
tags: each frame an image, each followed by the soundtrack from it to the next frame, the soundtrack encoded once."""

import base64
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmmmodal_hf import MMMModalProcessor
from mmmmodal_hf.media_mmmmodal import (
    CorruptMediaError,
    MediaError,
    MediaTooLargeError,
    NotAVideoError,
    Video,
    load_audio,
    load_video,
    sample_times,
)
from mmmmodal_hf.processing_mmmmodal import EncodedMedium

from tiny_parts import decodes, random_clip, random_image, tiny_model, tiny_vision_config
from video_files import (
    COLOURS,
    beeping_soundtrack,
    colour_at,
    write_sound,
    write_turned_video,
    write_variable_rate_video,
    write_video,
)

pytest.importorskip("av", reason="videos need the [video] extra (PyAV)")

LAYOUT_RE = re.compile(r"(<image>|<audio>)((?:<image_slot>|<audio_slot>)*) (</image>|</audio>)")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(folder / "stereo.mp4", audio_rate=44100, channels=2),
        "mkv": write_video(folder / "mono.mkv", audio_rate=16000, channels=1),
        "webm": write_video(folder / "clip.webm", codec="libvpx-vp9", audio_rate=48000),
        "mov": write_video(folder / "silent.mov", audio_rate=None),
        "avi": write_video(folder / "silent.avi", codec="mpeg4", audio_rate=None),
    }


def layout(processor, input_ids) -> list[tuple[str, int]]:
    """The media spans of an expanded prompt: ("image" or "audio", slots) in order."""
    text = processor.tokenizer.decode(input_ids)
    return [(match.group(1)[1:-1], match.group(2).count("_slot>")) for match in LAYOUT_RE.finditer(text)]


@pytest.mark.parametrize("container", ["mp4", "mkv", "webm", "mov", "avi"])
def test_frames_are_the_frames_at_their_times(videos, container):
    video = load_video(videos[container], num_frames=8)
    assert len(video.frames) == 8 and video.duration == pytest.approx(4.0, abs=0.1)
    assert video.times == pytest.approx([i * video.duration / 8 for i in range(8)])
    for frame, time in zip(video.frames, video.times):
        assert np.abs(np.asarray(frame)[10, 10].astype(int) - colour_at(time)).max() <= 6, (time, frame)
    assert (video.soundtrack is None) == (container in ("mov", "avi"))


@pytest.mark.parametrize("container", ["ts", "m2ts"])
def test_frames_of_a_transport_stream_are_the_frames_at_their_times(tmp_path, container):
    """Found: seeking in an MPEG transport stream (broadcast, camcorders' .m2ts, HLS segments) lands on the next
    keyframe after the time asked, so each frame before the first keyframe after it came from that keyframe (at
    0 s the frame of 2.5 s). The seek goes back until it lands at or before the time."""
    path = write_video(tmp_path / f"broadcast.{container}", seconds=6.0, gop=25, audio_rate=48000)
    video = load_video(path, num_frames=12)
    assert video.duration == pytest.approx(6.0, abs=0.1)
    for frame, time in zip(video.frames, video.times):
        assert np.abs(np.asarray(frame)[10, 10].astype(int) - colour_at(time)).max() <= 8, (time, frame)
    assert np.flatnonzero(np.abs(video.soundtrack) > 0.3)[0] / 16000 == pytest.approx(1.5, abs=0.005)


@pytest.mark.parametrize(
    "options, count", [({"num_frames": 3}, 3), ({"fps": 2}, 8), ({"fps": 0.1}, 1), ({"fps": 30, "max_frames": 20}, 20)]
)
def test_frame_counts_follow_num_frames_or_fps(videos, options, count):
    assert len(load_video(videos["mp4"], **options).frames) == count
    assert len(sample_times(4.0, **options)) == count


def test_num_frames_and_fps_together_are_refused(videos):
    with pytest.raises(ValueError, match="num_frames or fps, not both"):
        load_video(videos["mp4"], num_frames=4, fps=1)


@pytest.mark.parametrize(
    "options, said",
    [({"num_frames": 0}, "num_frames must be a positive whole number; got 0"),
     ({"num_frames": 2.5}, "num_frames must be a positive whole number; got 2.5"),
     ({"num_frames": "4"}, "num_frames must be a positive whole number; got '4'"),
     ({"fps": -1}, "fps must be a positive number; got -1"),
     ({"fps": float("inf")}, "fps must be a positive number; got inf"),
     ({"fps": 2, "max_frames": 0}, "max_frames must be a positive whole number; got 0")],
)  # fmt: skip
def test_frame_options_that_are_not_positive_numbers_are_named(processor, videos, options, said):
    """Found: `num_frames=0`, a negative `fps` gave one frame and `max_frames=0` the default 64, without a word."""
    with pytest.raises(ValueError, match=rf"^Sample 1, video 1 \('.*stereo.mp4'\): {re.escape(said)}$"):
        processor(text="<video>", videos=[videos["mp4"]], **options)
    assert len(load_video(videos["mp4"], num_frames=np.int64(2)).frames) == 2  # numpy's integers are whole numbers


def test_a_live_recording_without_a_duration_in_its_header_is_timed_by_its_packets(processor, tmp_path):
    """Found: a webm written as a stream (as browsers record) has no duration in its header; its 4 s were read as
    0 s, and every frame taken was the first. Its duration now comes from its packets, demuxed, not decoded."""
    import av

    path = write_video(tmp_path / "recorded.webm", codec="libvpx", audio_rate=48000, live=True)
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    video = load_video(path, num_frames=4)
    assert video.duration == pytest.approx(4.0, abs=0.1) and video.times == pytest.approx([0, 1, 2, 3], abs=0.03)
    for frame, time in zip(video.frames, video.times):
        assert np.abs(np.asarray(frame)[10, 10].astype(int) - colour_at(time)).max() <= 8, (time, frame)
    pieces = [
        slots
        for kind, slots in layout(processor, processor(text="<video>", videos=[path], num_frames=4)["input_ids"][0])
        if kind == "audio"
    ]
    assert len(pieces) == 4 and min(pieces) > 0  # the soundtrack split among the four frames, none empty


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_variable_frame_rate_video_gives_the_frame_shown_at_each_time(tmp_path, container):
    """Frames 40 to 330 ms apart: each time asked gets the last frame at or before it, as a player shows it."""
    written = write_variable_rate_video(tmp_path / f"variable.{container}")
    video = load_video(tmp_path / f"variable.{container}", fps=2)
    assert len(video.frames) == 8 and video.duration == pytest.approx(written[-1], abs=0.4)
    for frame, time in zip(video.frames, video.times):
        shown = max(at for at in written if at <= time + 1e-6)
        assert np.abs(np.asarray(frame)[10, 10].astype(int) - colour_at(shown)).max() <= 8, (time, shown)


@pytest.mark.parametrize("container", ["mp4", "mkv", "webm"])
def test_the_soundtrack_is_mono_at_the_processors_rate_with_its_beep_in_place(videos, container):
    soundtrack = load_video(videos[container]).soundtrack
    assert soundtrack.dtype == np.float32 and soundtrack.ndim == 1
    assert len(soundtrack) == pytest.approx(4 * 16000, rel=0.02)
    loudness = [np.abs(soundtrack[int(t * 16000) : int((t + 0.1) * 16000)]).max() for t in np.arange(0, 3.9, 0.1)]
    assert np.argmax(loudness) in (15, 16, 17)  # the beep at 1.5-1.8 s (the codec may shift it a few ms)
    assert loudness[np.argmax(loudness)] > 10 * np.median(loudness)


@pytest.mark.parametrize(("container", "delay"), [("mp4", 1.0), ("mp4", -0.5), ("mkv", 1.0), ("webm", 0.7),
                                                   ("webm", -0.5), ("webm", 0.0)])  # fmt: skip
def test_the_soundtrack_keeps_the_videos_clock_where_the_streams_start_apart(tmp_path, container, delay):
    """Found: a soundtrack that starts 1 s after the first frame was read from its own start, so each sound came 1 s
    early (in the piece of the frame before); a webm's Opus track, which starts 21 ms in, put its beeps 20 ms early;
    and a webm whose frames start later was timed by its container's end, taking the frames 0.5 s too far apart."""
    codec = {"webm": {"codec": "libvpx-vp9", "audio_rate": 48000}}.get(container, {})
    path = write_video(tmp_path / f"apart.{container}", audio_delay=delay, **codec)
    video = load_video(path, num_frames=4)
    onset = np.flatnonzero(np.abs(video.soundtrack) > 0.3)[0] / 16000
    assert onset == pytest.approx(1.5, abs=0.005)  # the beep 1.5 s after the first frame, as written
    assert len(video.soundtrack) / 16000 == pytest.approx(4.0, abs=0.04)  # the video's 4 s: silence where none was
    assert video.duration == pytest.approx(4.0, abs=0.03) and video.times == pytest.approx([0, 1, 2, 3], abs=0.03)
    for frame, time in zip(video.frames, video.times):
        assert np.abs(np.asarray(frame)[10, 10].astype(int) - colour_at(time)).max() <= 8, (time, frame)


def test_a_video_is_its_frames_each_followed_by_its_soundtrack_piece(processor, videos):
    inputs = processor(text="Look: <video> What colour?", videos=[videos["mp4"]], num_frames=4)
    spans = layout(processor, inputs["input_ids"][0])
    assert [kind for kind, _ in spans] == ["image", "audio"] * 4
    video = load_video(videos["mp4"], num_frames=4)
    soundtrack_slots = processor.num_clip_slots(len(video.soundtrack))
    pieces = [slots for kind, slots in spans if kind == "audio"]
    assert sum(pieces) == soundtrack_slots  # the whole soundtrack, split among the pieces
    hop = processor.feature_extractor.hop_length
    seconds_per_slot = processor.audio_conv_stride * 2 * hop / processor.feature_extractor.sampling_rate
    for piece, start, end in zip(pieces, video.times, [*video.times[1:], len(video.soundtrack) / 16000]):
        assert abs(piece - (end - start) / seconds_per_slot) <= 2, (piece, start, end)  # by time
    assert all(slots == processor.num_image_slots(32, 32) for kind, slots in spans if kind == "image")
    assert inputs.video_layouts == [list(zip(*[iter(slots for _, slots in spans)] * 2))]  # as the text lays it out

    # The frames are images, and the soundtrack one clip encoded in its own windows: the same features.
    as_media = processor(text="<image>" * 4 + "<audio>", images=video.frames, audio=[video.soundtrack])
    assert np.array_equal(inputs["pixel_values"], as_media["pixel_values"])
    assert np.array_equal(inputs["input_features"], as_media["input_features"])
    assert len(inputs["input_features"]) == processor.num_audio_windows(len(video.soundtrack)) == 5


def test_a_video_without_its_soundtrack_is_its_frames(processor, videos):
    for source, options in ((videos["mp4"], {"load_audio_from_video": False}), (videos["mov"], {})):
        inputs = processor(text="<video>", videos=[source], num_frames=3, **options)
        assert [kind for kind, _ in layout(processor, inputs["input_ids"][0])] == ["image"] * 3
        assert "input_features" not in inputs


def test_a_file_and_its_frames_with_their_soundtrack_give_the_same_inputs(processor, videos):
    decoded = load_video(videos["mp4"], num_frames=8, sampling_rate=16000)
    as_frames = {"frames": decoded.frames, "fps": 2, "audio": decoded.soundtrack, "sampling_rate": 16000}
    expected = processor(text="<video> Apa warna?", videos=[videos["mp4"]], num_frames=8)
    for given in (decoded, as_frames, videos["mp4"].read_bytes()):
        inputs = processor(text="<video> Apa warna?", videos=[given], num_frames=8)
        assert inputs["input_ids"] == expected["input_ids"]
        assert np.array_equal(inputs["pixel_values"], expected["pixel_values"])
        assert np.array_equal(inputs["input_features"], expected["input_features"])


def test_a_list_of_frames_in_videos_is_one_video_as_transformers_reads_it(processor):
    """transformers (`make_batched_videos`) reads a list of PIL images or (height, width, 3) arrays as one video's
    frames, at any depth; so does the processor, where images keep their per-sample lists."""
    arrays = [np.full((24, 32, 3), colour, np.uint8) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames = [Image.fromarray(array) for array in arrays]
    texts, images = ["<video> Apa?", "<image> <video>"], [[], [frames[0]]]
    expected = processor(text=texts, videos=[[frames], [arrays]], images=images)
    for videos in ([frames, arrays], [frames, np.stack(arrays)], np.stack([arrays, arrays])):
        inputs = processor(text=texts, videos=videos, images=images)
        assert inputs["input_ids"] == expected["input_ids"] and len(inputs.video_layouts) == 2
        assert np.array_equal(inputs["pixel_values"], expected["pixel_values"])
    as_array = processor(text="<video> Apa?", videos=[np.stack(arrays)], num_frames=3)["input_ids"]
    for videos in (frames, [frames], [[frames]], tuple(arrays)):
        assert processor(text="<video> Apa?", videos=videos, num_frames=3)["input_ids"] == as_array
    with pytest.raises(ValueError, match="Sample 1 has 1 <video> placeholder.s. but 2 video.s. were given"):
        processor(text=["<video>", "<video>"], videos=[[frames, frames], [frames]])


def test_a_soundtrack_at_any_rate_and_channel_count(processor):
    frames = [np.full((24, 32, 3), colour, np.uint8) for colour in ((255, 0, 0), (0, 255, 0))]
    for rate, channels in ((44100, 2), (8000, 1), (22050, 6)):
        sound = beeping_soundtrack(2.0, rate, channels)
        video = load_video({"frames": frames, "fps": 1, "audio": sound, "sampling_rate": rate}, num_frames=2)
        assert video.soundtrack.shape == (32000,) and video.sampling_rate == 16000
        own = load_video({"frames": frames, "fps": 1, "audio": sound, "sampling_rate": rate}, sampling_rate=None)
        assert own.sampling_rate == rate and np.allclose(own.soundtrack, sound.mean(axis=0))


@pytest.mark.parametrize(("container", "channels"), [("mp4", 6), ("mkv", 2)])
def test_a_soundtrack_is_its_channels_averaged_to_the_bit_as_a_whole_clip_is(tmp_path, container, channels):
    """A soundtrack's channels are averaged as it decodes (an hour of 5.1 at 48 kHz was held as six channels, 4 GB,
    before it was made mono; now 0.7 GB), to the same bits as the whole track's channels read as a clip is."""
    import av

    path = write_video(tmp_path / f"surround.{container}", audio_rate=48000, channels=channels)
    with av.open(str(path)) as file:
        whole = np.concatenate([frame.to_ndarray() for frame in file.decode(file.streams.audio[0])], axis=1)
    assert whole.shape[0] == channels
    assert np.array_equal(load_video(path).soundtrack, load_audio(whole, 16000, 48000))


@pytest.mark.parametrize(("container", "rate"), [("mp4", 44100), ("mkv", 16000), ("webm", 48000)])
def test_a_video_file_keeps_its_soundtracks_own_rate_when_asked(videos, container, rate):
    """`sampling_rate=None` (vLLM's connector: the model's processor resamples later) keeps the file's rate, and the
    video says which it is; the beep stays at its time."""
    video = load_video(videos[container], sampling_rate=None)
    assert video.sampling_rate == rate and len(video.soundtrack) == pytest.approx(4 * rate, rel=0.02)
    resampled = load_video(videos[container])
    assert resampled.sampling_rate == 16000
    onsets = [np.argmax(np.abs(v.soundtrack) > 0.25) / v.sampling_rate for v in (video, resampled)]
    assert onsets[0] == pytest.approx(1.5, abs=0.05) and onsets[1] == pytest.approx(onsets[0], abs=0.005)
    assert load_video(videos["mov"], sampling_rate=None).sampling_rate is None  # no soundtrack, no rate
    # Handed back to the processor, it is brought to the processor's rate: the inputs of the file itself.
    assert load_video(video).sampling_rate == 16000 and np.allclose(load_video(video).soundtrack, resampled.soundtrack)


def test_a_chat_takes_video_blocks_with_transformers_keywords(processor, videos):
    conversation = [
        {"role": "user", "content": [{"type": "video", "path": str(videos["mp4"])}, {"type": "text", "text": "Apa?"}]}
    ]
    assert "<video>" in processor.apply_chat_template(conversation, add_generation_prompt=True)
    for options, kinds in (
        ({"num_frames": 3}, ["image", "audio"] * 3),
        ({"fps": 1, "load_audio_from_video": False}, ["image"] * 4),
    ):
        inputs = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, **options
        )
        assert [kind for kind, _ in layout(processor, inputs["input_ids"][0])] == kinds


def test_a_chat_video_block_takes_every_source_an_image_block_takes(processor, videos):
    """ "video", "path", "url" (transformers' keys) and "base64" (as image and audio blocks take, a data URL too):
    the same inputs. Found: a base64 video, or a block with no source, was refused as a count mismatch."""
    data = base64.b64encode(videos["mp4"].read_bytes()).decode()

    def inputs(block: dict) -> dict:
        chat = [{"role": "user", "content": [block, {"type": "text", "text": "Apa?"}]}]
        return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)

    expected = inputs({"type": "video", "path": str(videos["mp4"])})
    for block in ({"type": "video", "video": str(videos["mp4"])}, {"type": "video", "base64": data},
                  {"type": "video", "base64": f"data:video/mp4;base64,{data}"}):  # fmt: skip
        given = inputs(block)
        assert given["input_ids"] == expected["input_ids"], block.keys()
        assert all(np.array_equal(given[key], expected[key]) for key in ("pixel_values", "input_features"))
    with pytest.raises(ValueError, match=r"^A video block needs one of 'video', 'path', 'url' or 'base64'; got "):
        inputs({"type": "video", "text": "no source"})


def test_a_batch_mixing_videos_images_and_clips_generates_as_each_prompt_alone(processor, model, videos):
    texts = ["[INST] <image> </image> <video> Which colour came last? [/INST]", "[INST] <audio> </audio> Apa? [/INST]"]
    kwargs = {"videos": [[videos["mkv"]], []], "images": [[random_image(1)], []], "audio": [[], [random_clip(2)]]}
    batch = processor(text=texts, num_frames=3, return_tensors="pt", **kwargs)
    together = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, text in enumerate(texts):
        alone = processor(text=[text], num_frames=3, return_tensors="pt", **{k: [v[row]] for k, v in kwargs.items()})
        tokens = model.generate(**alone, max_new_tokens=4, do_sample=False)[:, alone["input_ids"].shape[1] :]
        assert together[row].tolist() == tokens[0].tolist()


def test_pooled_frames_fill_a_quarter_of_the_slots_each_averaged_in_2x2_groups(processor, model, videos):
    import torch

    text = "[INST] <image> </image> <video> Which colour came last? [/INST]"
    inputs = processor(text=text, images=[random_image(0)], videos=[videos["mp4"]], num_frames=3, pool_frames=True,
                       return_tensors="pt")  # fmt: skip
    spans = layout(processor, inputs["input_ids"][0])
    full, pooled = processor.num_image_slots(32, 32), processor.num_image_slots(32, 32, pooled=True)
    assert (full, pooled) == (16, 4)
    assert [slots for kind, slots in spans if kind == "image"] == [full, pooled, pooled, pooled]  # the image is whole
    assert inputs["pooled_images"].tolist() == [False, True, True, True]
    unpooled = processor(text=text, images=[random_image(0)], videos=[videos["mp4"]], num_frames=3)
    assert "pooled_images" not in unpooled  # off by default: the published layout
    assert np.array_equal(inputs["pixel_values"], unpooled["pixel_values"])
    assert np.array_equal(inputs["input_features"], unpooled["input_features"])  # the soundtrack is as it was

    with torch.no_grad():
        whole = model.model.get_image_features(inputs["pixel_values"]).pooler_output  # (4, 16, hidden)
        got = model.model.get_image_features(inputs["pixel_values"], pooled_images=inputs["pooled_images"])
    grid = whole.unflatten(1, (4, 4))  # each frame's 4x4 patches, averaged in 2x2 groups
    groups = [grid[1:, r : r + 2, c : c + 2].mean((1, 2)) for r in (0, 2) for c in (0, 2)]
    expected = torch.cat([whole[0], torch.stack(groups, 1).flatten(0, 1)])
    assert torch.allclose(got.pooler_output, expected, atol=1e-6)

    # An odd grid (5 x 5 patches at 40 px): its last row and column are groups of their own.
    odd = processor(text="<video>", videos=[videos["mp4"]], num_frames=1, pool_frames=True, size={"height": 40, "width": 40},
                    return_tensors="pt")  # fmt: skip
    assert layout(processor, odd["input_ids"][0])[0] == ("image", 9)
    at_40 = tiny_model(processor, vision_config=tiny_vision_config(image_size=40))
    with torch.no_grad():
        whole = at_40.model.get_image_features(odd["pixel_values"]).pooler_output.unflatten(1, (5, 5))[0]
        got = at_40.model.get_image_features(odd["pixel_values"], pooled_images=odd["pooled_images"]).pooler_output
    assert torch.allclose(got[8], whole[4, 4], atol=1e-6) and torch.allclose(got[2], whole[:2, 4].mean(0), atol=1e-6)

    # Frames already encoded (`EncodedMedium`: a KV cache's, or measured) have no pixel rows, so no pooled rows.
    encoded = Video([EncodedMedium(pooled)] * 2, [0.0, 1.0], 2.0)
    mixed = processor(text=text, images=[random_image(0)], videos=[encoded], pool_frames=True)
    assert mixed["pooled_images"].tolist() == [False] and len(mixed["pixel_values"]) == 1
    assert [slots for kind, slots in layout(processor, mixed["input_ids"][0])] == [full, pooled, pooled]

    # generate: batched (left-padded beside another prompt) and beam search answer as the prompt alone does.
    other = processor(text=["[INST] <audio> </audio> Apa? [/INST]"], audio=[random_clip(2)], return_tensors="pt")
    batch = processor(text=[text, "[INST] <audio> </audio> Apa? [/INST]"], images=[[random_image(0)], []],
                      videos=[[videos["mp4"]], []], audio=[[], [random_clip(2)]], num_frames=3, pool_frames=True,
                      return_tensors="pt")  # fmt: skip
    settings = {"max_new_tokens": 4, "do_sample": False}
    together = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :].tolist()
    alone = [
        model.generate(**prompt, **settings)[0, prompt["input_ids"].shape[1] :].tolist() for prompt in (inputs, other)
    ]
    assert together == alone
    beams = model.generate(**batch, **settings, num_beams=2)[:, batch["input_ids"].shape[1] :].tolist()
    assert beams[0] == model.generate(**inputs, **settings, num_beams=2)[0, inputs["input_ids"].shape[1] :].tolist()


def test_continuing_a_cache_after_pooled_frames_encodes_only_the_new_image_unpooled(processor, model, videos):
    """A second turn given with the first turn's KV cache and all its media again (pooled frames, then a new image
    that keeps all its slots): only the new image is encoded, and the answer is a fresh prefill's."""
    import torch

    from mmmmodal_hf.modeling_mmmmodal import CACHE_NAME

    first_text = "[INST] <video> Which colour came last? [/INST]"
    first = processor(text=first_text, videos=[videos["mp4"]], num_frames=3, pool_frames=True, return_tensors="pt")
    both = processor(text=first_text + " Red. [INST] <image> </image> And this? [/INST]", images=[random_image(5)],
                     videos=[videos["mp4"]], num_frames=3, pool_frames=True, return_tensors="pt")  # fmt: skip
    assert both["pooled_images"].tolist() == [True, True, True, False]
    media = {key: value for key, value in both.items() if key not in ("input_ids", "attention_mask")}
    ids = both["input_ids"]
    with torch.no_grad():
        cache = model(**first, use_cache=True)[CACHE_NAME]
        kept = model.prepare_inputs_for_generation(  # as generate prepares its first step
            ids, **{CACHE_NAME: cache}, **media, attention_mask=torch.ones_like(ids), is_first_iteration=True
        )
        assert kept["pooled_images"].tolist() == [False] and kept["pixel_values"].shape[0] == 1
        assert torch.equal(kept["pixel_values"], both["pixel_values"][3:])
        settings = {
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": 6,
            "min_new_tokens": 6,
            "do_sample": False,
        }
        cache = model(**first, use_cache=True)[CACHE_NAME]
        continued = model.generate(input_ids=ids, **{CACHE_NAME: cache}, **media, **settings)
        fresh = model.generate(input_ids=ids, **media, **settings)
    assert continued[0, -6:].tolist() == fresh[0, -6:].tolist()


def test_training_rows_take_videos(processor, videos):
    from mmmmodal_hf.data import conversation_from_row, encode_conversation

    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video", "path": "stereo.mp4"}, {"type": "text", "text": "Colour?"}],
            },
            {"role": "assistant", "content": "Red, then green."},
        ]
    }
    encoded = encode_conversation(processor, conversation_from_row(row, str(videos["mp4"].parent)))
    assert len(encoded["pixel_values"]) == 8 and len(encoded["input_features"]) == 5
    labelled = [token for token, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
    assert processor.tokenizer.decode(labelled).strip() == "Red, then green.</s>"


def test_a_shortened_training_row_decodes_each_video_once_and_keeps_whole_exchanges(processor, videos, tmp_path):
    """A row over `block_size` loses whole trailing exchanges, measured by its media's slots: its videos are decoded
    once, as its images and clips are, and what is left is encoded as the shorter row alone would be."""
    from mmmmodal_hf.data import conversation_from_row, encode_conversation

    def exchange(block, answer):
        return [{"role": "user", "content": [block, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": answer}]  # fmt: skip

    random_image(3).save(tmp_path / "still.png")
    messages = [
        *exchange({"type": "video", "path": str(videos["mp4"])}, "Red."),
        *exchange({"type": "image", "path": str(tmp_path / "still.png")}, "Grey."),
        *exchange({"type": "video", "path": str(videos["mkv"])}, "Green."),
    ]
    for options in ({"num_frames": 2}, {"num_frames": 2, "pool_frames": True}):
        first = encode_conversation(processor, conversation_from_row({"messages": messages[:2]}), video_kwargs=options)
        with decodes() as opened:  # two exchanges dropped: two measuring tries
            shortened = encode_conversation(
                processor, conversation_from_row({"messages": messages}), len(first["input_ids"]) + 5,
                video_kwargs=options,
            )  # fmt: skip
        assert opened == {"stereo.mp4": 1, "mono.mkv": 1, "still.png": 1}, options
        assert shortened.keys() == first.keys()
        for key in first:
            assert np.array_equal(np.asarray(shortened[key]), np.asarray(first[key])), (options, key)


def test_training_reads_videos_with_its_video_options_and_pools_frames_beside_whole_images(
    processor, base_folder, videos, tmp_path
):
    """`mmmmodal train --num_frames 3 --pool_frames`: rows read videos as the processor's keywords say, a batch
    flags each image row (a video's pooled frames, another row's whole image), and the stage trains on it."""
    import json

    import torch

    from mmmmodal_hf.collator import MMMModalPackingCollator
    from mmmmodal_hf.data import conversation_from_row, encode_conversation
    from mmmmodal_hf.training import parse_args, train

    def row(blocks, answer):
        return {"messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "Colour?"}]},
                             {"role": "assistant", "content": answer}]}  # fmt: skip

    random_image(3).save(tmp_path / "still.png")
    rows = [
        row([{"type": "video", "path": str(videos["mp4"])}], "Red, then green."),
        row([{"type": "image", "path": str(tmp_path / "still.png")}], "Grey."),
    ]
    options = {"num_frames": 3, "pool_frames": True}
    video_row, image_row = (
        encode_conversation(processor, conversation_from_row(r), video_kwargs=options) for r in rows
    )
    assert len(video_row["pixel_values"]) == 3 and video_row["pooled_images"].tolist() == [True] * 3
    slots = int((np.asarray(video_row["input_ids"]) == processor.image_token_id).sum())
    assert slots == 3 * processor.num_image_slots(32, 32, pooled=True)
    unpooled = encode_conversation(processor, conversation_from_row(rows[0]), video_kwargs={"num_frames": 3})
    assert "pooled_images" not in unpooled and len(unpooled["input_ids"]) > len(video_row["input_ids"])
    batch = MMMModalPackingCollator(processor.tokenizer.pad_token_id, 512)([video_row, image_row])
    assert batch["pooled_images"].tolist() == [True, True, True, False] and len(batch["pixel_values"]) == 4

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args, training_args = parse_args(
        [*("--stage", "finetune", "--model", str(base_folder), "--data", str(data), "--output_dir", str(tmp_path / "out")),
         *("--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no"),
         *("--block_size", "512", "--num_frames", "3", "--pool_frames", "True", "--use_cpu", "True", "--logging_steps", "1")]
    )  # fmt: skip
    assert args.video_kwargs == {"num_frames": 3, "load_audio_from_video": True, "pool_frames": True}
    history = []
    train(args, training_args, [_LossesInto(history)])
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history)))
    with pytest.raises(ValueError, match="give --num_frames or --fps, not both"):
        parse_args(["--stage", "finetune", "--model", "m", "--data", "d", "--output_dir", "o", "--num_frames", "2",
                    "--fps", "1"])  # fmt: skip


class _LossesInto:
    """A `TrainerCallback` that keeps each logged training loss."""

    def __init__(self, losses: list):
        self.losses = losses

    def __getattr__(self, name):  # every other callback event: nothing to do
        return lambda *args, **kwargs: None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda folder: folder / "missing.mp4", ValueError, "no such file"),
        (lambda folder: _bytes(folder / "noise.mp4", np.random.bytes(5000)), NotAVideoError, "not a readable video"),
        (lambda folder: _wav(folder / "speech.wav"), NotAVideoError, "no video stream"),
        (  # found: its album picture was taken for the video, which then "cannot be decoded near 0.00 s"
            lambda folder: write_sound(folder / "song.m4a", "aac", "mp4", cover_art=True),
            NotAVideoError,
            r"no video stream \(an audio file\? give it as audio\)",
        ),
        (lambda folder: _png(folder / "still.png"), NotAVideoError, "a still image, not a video"),
        (lambda folder: {"frames": [], "fps": 2}, CorruptMediaError, "no frames"),
        (
            lambda folder: None,
            MediaError,
            "a video must be a file path, URL or bytes, a list of frames, .* got <NoneType>",
        ),
        (
            lambda folder: {"frames": np.zeros((32, 32, 3), np.uint8)},  # one image; `[image]` is a 1-frame video
            MediaError,
            r"\(frames, height, width, channels\) array .* got <ndarray \(32, 32, 3\)>",
        ),
        (
            lambda folder: {"audio": np.zeros(800)},
            MediaError,
            r"or a dict of 'frames' .* got <dict with keys \['audio'\]>",
        ),
        (
            lambda folder: {"frames": [random_image(0)], "fps": 0},
            MediaError,
            "the frames' fps must be positive; got 0",
        ),
    ],
    ids=[
        "missing",
        "not_a_video",
        "audio_file",
        "audio_file_with_album_picture",
        "still_image",
        "no_frames",
        "none",
        "one_image_array",
        "no_frames_key",
        "fps_0",
    ],
)
def test_bad_videos_are_named(processor, tmp_path, make, error, message):
    with pytest.raises(error, match=rf"Sample 1, video 1 .*{message}"):
        processor(text="<video> ?", videos=[make(tmp_path)])


def test_a_truncated_video_is_named_or_read_as_far_as_it_goes(processor, videos, tmp_path):
    data = videos["mkv"].read_bytes()
    truncated = _bytes(tmp_path / "cut.mkv", data[: len(data) // 2])
    try:
        inputs = processor(text="<video>", videos=[truncated], num_frames=4)
    except ValueError as error:  # the file's own stated duration, or its missing end
        assert str(error).startswith("Sample 1, video 1 ") and isinstance(error, (CorruptMediaError, NotAVideoError))
    else:
        assert len(inputs["pixel_values"]) == 4


def test_approximate_lengths_read_a_video_files_header_only(processor, videos, tmp_path):
    """Length-grouped training measures every row before it starts: a video file counts from its header (its
    duration, whether it has a soundtrack) as the processor would lay it out, to within a token of its encoding;
    no frame is decoded, so a file cut in half whose header still states its length measures as the whole file."""
    from mmmmodal_hf.data import approximate_length, row_conversation, video_from_header

    def row(path) -> dict:
        question = [{"type": "video", "path": str(path)}, {"type": "text", "text": "Which colour?"}]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Red."}]}

    options = [{}, {"num_frames": 3, "pool_frames": True}, {"fps": 2.0}, {"load_audio_from_video": False}]
    for name in ("mp4", "mov", "webm"):  # a 44.1 kHz stereo soundtrack, none, a 48 kHz one
        for video_kwargs in options:
            approximate = approximate_length(processor, row_conversation(row(videos[name]), 0), video_kwargs)
            encoded = processor.apply_chat_template(
                row(videos[name])["messages"], tokenize=True, return_dict=True,
                processor_kwargs={"padding": False, **video_kwargs},
            )  # fmt: skip
            assert abs(approximate - len(encoded["input_ids"][0])) <= 1, (name, video_kwargs)
    data = videos["mkv"].read_bytes()
    cut = _bytes(tmp_path / "cut.mkv", data[: len(data) // 2])
    whole = approximate_length(processor, row_conversation(row(videos["mkv"]), 0))
    assert approximate_length(processor, row_conversation(row(cut), 0)) == whole
    song = write_sound(tmp_path / "song.m4a", "aac", "mp4", cover_art=True)  # its album picture is no video stream
    assert video_from_header(processor, song, {}) is None  # so it is decoded, and refused, as the loader refuses it


def test_frames_over_the_pixel_limit_are_refused_before_decoding(videos, session_processor, tmp_path):
    small = MMMModalProcessor(
        session_processor.image_processor, session_processor.feature_extractor, session_processor.tokenizer,
        patch_size=session_processor.patch_size, audio_conv_kernel=session_processor.audio_conv_kernel,
        audio_conv_stride=session_processor.audio_conv_stride, max_image_pixels=1000,
    )  # fmt: skip
    with pytest.raises(MediaTooLargeError, match="Sample 1, video 1 .*64x48, more than max_pixels=1,000"):
        small(text="<video>", videos=[videos["mp4"]])


def test_skip_bad_samples_keeps_the_rest_of_the_batch(processor, videos, tmp_path):
    broken = _bytes(tmp_path / "broken.mp4", b"not a video at all")
    inputs = processor(
        text=["<video> ok?", "<video> broken?"],
        videos=[[videos["mp4"]], [broken]],
        num_frames=2,
        skip_bad_samples=True,
    )
    assert inputs.kept_samples == [0] and "Sample 2, video 1" in inputs.skipped_samples[0]["error"]


def test_frames_come_out_upright_as_the_files_display_matrix_says(tmp_path):
    video = load_video(write_turned_video(tmp_path / "phone.mp4"), num_frames=2)
    for frame in video.frames:  # stored 64 x 32, red left and blue right; shown turned clockwise: red on top
        pixels = np.asarray(frame, dtype=int)
        assert pixels.shape == (64, 32, 3)
        assert np.abs(pixels[:24] - COLOURS[0]).max() < 16 and np.abs(pixels[40:] - COLOURS[2]).max() < 16


def test_a_video_object_is_taken_as_decoded():
    video = Video([random_image(0)], [0.0], 1.0, None)
    assert load_video(video) is video and "1 frames over 1.00 s" in repr(video)


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _png(path):
    random_image(4).save(path)
    return path


def _wav(path):
    import soundfile

    soundfile.write(path, random_clip(3, seconds=1.0), 16000)
    return path


def test_without_pyav_a_video_file_names_the_extra(videos):
    code = (
        "import sys; sys.modules['av'] = None\n"  # as where PyAV is not installed
        "from mmmmodal_hf.media_mmmmodal import load_video\n"
        f"load_video({str(videos['mp4'])!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (
        run.returncode == 1
        and 'ImportError: reading a video file needs PyAV: pip install av (or "mmmmodal-hf[video]")' in run.stderr
    )


def test_an_animated_gif_is_a_video(tmp_path):
    from PIL import Image

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    frames = [Image.new("RGB", (32, 24), colour) for colour in colours]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
    video = load_video(tmp_path / "a.gif", num_frames=4)
    assert video.duration == pytest.approx(2.0) and video.soundtrack is None
    assert [tuple(int(v) for v in np.asarray(frame)[5, 5]) for frame in video.frames] == colours


def test_validate_checks_videos(tmp_path, session_processor, videos):
    import json

    from mmmmodal_hf.datatools.validate import validate_dataset

    wav = _wav(tmp_path / "speech.wav")
    broken = _bytes(tmp_path / "broken.mp4", b"\x00" * 4000)

    def row(path, content="<video>\nWhat changes?"):  # the published format, a video behind its tag
        return {"conversations": [{"role": "user", "content": content}, {"role": "assistant", "content": "Red."}],
                "filename": [str(path)]}  # fmt: skip

    blocks = {"messages": [  # content blocks: a silent video and an image
        {"role": "user", "content": [{"type": "video", "path": str(videos["mov"])}, {"type": "image", "path": str(wav)}]},
        {"role": "assistant", "content": "Nothing."}]}  # fmt: skip
    rows = [row(videos["mp4"]), row(wav), row(broken), blocks]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_dataset(tmp_path / "rows.jsonl", session_processor, block_size=4096)
    problems = {kind: [row_id.rsplit(":", 1)[1] for row_id, _ in items] for kind, items in report.problems.items()}
    assert problems == {"wrong media kind": ["2", "4"], "unreadable media": ["3"]}, report.problems
    assert "is audio, but its tag says video" in report.problems["wrong media kind"][0][1]
    assert report.kinds["video"] == 3 and report.kinds["mixed"] == 1
    assert report.video_seconds == [pytest.approx(4.0, abs=0.1)] and report.videos_with_soundtrack == 1
    assert "video seconds:  min 4.0, p50 4.0, max 4.0; 1 of 1 with a soundtrack" in report.summary()


def test_combine_joins_video_rows_each_video_behind_its_own_tag(tmp_path, session_processor, videos):
    """`mmmmodal data combine --mix video=...,mixed=...` joins video rows (content blocks or published) with image rows:
    every tag keeps its file, and the output validates, each video decoded; a row with inline media is not joined."""
    import json

    from mmmmodal_hf.datatools.combine import combine_rows
    from mmmmodal_hf.datatools.validate import validate_dataset

    random_image(1).save(tmp_path / "still.png")

    def blocks(kind, path, answer):
        return {"messages": [{"role": "user", "content": [{"type": kind, "path": str(path)}, {"type": "text", "text": "Colour?"}]},
                             {"role": "assistant", "content": answer}]}  # fmt: skip

    published = {"conversations": [{"role": "user", "content": "<video>\nWhat changes?"},
                                   {"role": "assistant", "content": "The colour."}], "filename": [str(videos["mkv"])]}  # fmt: skip
    inline = {"messages": [{"role": "user", "content": [{"type": "video", "base64": "AAAA"}]},
                           {"role": "assistant", "content": "?"}]}  # fmt: skip
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        blocks("video", videos["mp4"], "Red."), published, blocks("video", videos["mov"], "Grey."), inline)))  # fmt: skip
    (sources / "images.jsonl").write_text(json.dumps(blocks("image", tmp_path / "still.png", "Grey.")) + "\n")
    out = tmp_path / "out" / "combined.jsonl"
    result = combine_rows([sources / "videos.jsonl", sources / "images.jsonl"], out, count=40,
                          mix={"video": 0.5, "mixed": 0.5}, rows_per_output={2: 0.5, 3: 0.5}, seed=1)  # fmt: skip
    assert result["source_rows"]["video"] == 3 and result["unusable_source_rows"] == 1
    assert max(result["videos_per_row"]) >= 2 and set(result["kinds"]) == {"video", "mixed"}
    for row in map(json.loads, out.read_text().splitlines()):
        tags = [tag for message in row["conversations"] for tag in re.findall(r"<(video|image)>", message["content"])]
        kinds = ["image" if name.endswith(".png") else "video" for name in row["filename"]]
        assert tags == kinds and all((out.parent / name).is_file() for name in row["filename"])
    report = validate_dataset(out, session_processor, block_size=100_000)
    assert (
        report.ok
        and report.rows == 40
        and len(report.video_seconds) == sum(count * number for count, number in result["videos_per_row"].items())
    )


def test_eval_scores_rows_with_videos(tmp_path, base_folder, videos):
    import json
    from dataclasses import replace

    pytest.importorskip("sacrebleu")
    from mmmmodal_hf.evaluation import EvalSettings, evaluate

    video_row = {"kind": "video_colour", "language": "en", "messages": [
        {"role": "user", "content": [{"type": "video", "path": str(videos["webm"])}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Red."}]}  # fmt: skip
    text_row = {"kind": "text", "language": "ms", "messages": [
        {"role": "user", "content": "Apa khabar?"}, {"role": "assistant", "content": "Baik."}]}  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (video_row, text_row)))
    settings = EvalSettings(
        model=str(base_folder), data=[str(tmp_path / "rows.jsonl")], max_new_tokens=3, batch_size=2
    )
    result = evaluate(settings, tmp_path / "out", say=lambda _: None)
    assert result["by_kind"]["video_colour"]["exact_match"]["n"] == 1 and not result["skipped"]

    # A row's video is decoded once for all its turns; a video that cannot be read skips its row, named, not the run.
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    two_turns = {"kind": "video_colour", "language": "ms", "messages": [
        *video_row["messages"], {"role": "user", "content": "Dan kemudian?"}, {"role": "assistant", "content": "Hijau."}]}  # fmt: skip
    broken = {"kind": "video_colour", "language": "en", "messages": [
        {"role": "user", "content": [{"type": "video", "path": str(tmp_path / "broken.mp4")}]},
        {"role": "assistant", "content": "Red."}]}  # fmt: skip
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (two_turns, broken)))
    with decodes() as opened:
        more = evaluate(replace(settings, data=[str(tmp_path / "more.jsonl")]), tmp_path / "more", say=lambda _: None)
    assert opened == {"clip.webm": 1, "broken.mp4": 1}
    assert more["by_kind"]["video_colour"]["exact_match"]["n"] == 2
    [skipped] = more["skipped"]
    assert skipped["reason"].startswith(f"Sample 1, video 1 ('{tmp_path / 'broken.mp4'}'): not a readable video (")

    # `mmmmodal eval --num-frames 3 --pool-frames` predicts what `generate` answers with the processor's same keywords.
    scored = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "eval", str(base_folder), "--data", str(tmp_path / "rows.jsonl"),
         "--max-new-tokens", "3", "--num-frames", "3", "--pool-frames", "--output-dir", str(tmp_path / "pooled")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    predicted = [json.loads(line) for line in (tmp_path / "pooled" / "predictions.jsonl").read_text().splitlines()]
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(base_folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(base_folder, trust_remote_code=True)
    inputs = processor.apply_chat_template(video_row["messages"][:1], add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt", num_frames=3, pool_frames=True)  # fmt: skip
    assert inputs["pooled_images"].tolist() == [True] * 3
    answer = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    video_prediction = next(record["prediction"] for record in predicted if record["kind"] == "video_colour")
    assert video_prediction == processor.decode(answer, skip_special_tokens=True).strip()
    assert json.loads((tmp_path / "pooled" / "settings.json").read_text())["video_options"] == {
        "num_frames": 3,
        "pool_frames": True,
    }
    default = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert video_prediction != next(r["prediction"] for r in default if r["kind"] == "video_colour")  # 8 whole frames
    refused = subprocess.run(
        [sys.executable, "-m", "mmmmodal_hf.cli", "eval", "m", "--data", "d", "--output-dir", str(tmp_path / "x"),
         "--backend", "openai", "--base-url", "http://127.0.0.1:9", "--pool-frames"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "are for --backend transformers" in refused.stderr


@pytest.mark.parametrize("options", [{"num_frames": 3}, {"num_frames": 3, "pool_frames": True}], ids=["", "pooled"])
def test_a_chat_session_takes_videos_and_answers_as_from_scratch(model, session_processor, videos, options):
    import torch

    from mmmmodal_hf import MMMModalChatSession

    generate = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    session = MMMModalChatSession(model, session_processor, video_options=options, **generate)
    turns = [
        ("Watch this.", [random_image(1)], [videos["mp4"]]),
        ("And then?", [], []),
        ("This one?", [], [videos["mov"]]),
    ]
    for number, (text, images, clips) in enumerate(turns):
        session.send(text, images=images, videos=clips)
        inputs = session_processor.apply_chat_template(
            session.messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            **options,
        )  # fmt: skip
        with torch.no_grad():
            expected = model.generate(**inputs, **generate)[0, inputs["input_ids"].shape[1] :].tolist()
        assert session.last_reply_ids == expected, f"turn {number + 1}"
        if number:  # earlier frames and soundtracks are in the cache, not encoded again
            assert session.last_prefill_tokens < inputs["input_ids"].shape[1] / 3
    assert session.messages[0]["content"][1] == {"type": "video", "path": str(videos["mp4"])}  # a training row
    session.undo()
    session.send("This one?", videos=[videos["mov"]])
    assert session.last_reply_ids == expected


def test_a_chat_session_takes_a_list_of_frames_as_one_video(model, session_processor):
    from mmmmodal_hf import MMMModalChatSession

    frames = [Image.fromarray(np.full((24, 32, 3), colour, np.uint8)) for colour in COLOURS[:3]]
    replies = []
    for videos in (frames, [frames], np.stack([np.asarray(frame) for frame in frames])):
        session = MMMModalChatSession(model, session_processor, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        replies.append(session.send("Apa?", videos=videos))
        assert len(session.messages[0]["content"]) == 2  # the video's block, then the text's
    assert replies[0] == replies[1] == replies[2]


def test_the_terminal_chat_attaches_videos(saved_folder, videos, tmp_path):
    import json

    wav = _wav(tmp_path / "speech.wav")
    script = "\n".join([f"/video {videos['mp4']}", "What happens?", f"/video {wav}", "/video", "And then?",
                        f"/save {tmp_path / 'chat.json'}", "/quit"]) + "\n"  # fmt: skip
    command = [sys.executable, "-m", "mmmmodal_hf.cli", "chat", str(saved_folder), "--max-new-tokens", "3",
               "--num-frames", "3", "--pool-frames"]  # fmt: skip
    completed = subprocess.run(command, input=script, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "(video attached to the next turn" in out and "/video needs a file: /video PATH" in out
    assert "error: video 2 (" in out and "no video stream" in out and "not attached" in out
    assert sum(line.startswith("model> ") for line in out.splitlines()) == 2
    saved = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert saved[0]["content"][0] == {"type": "video", "path": str(videos["mp4"].resolve())}

    one_shot = subprocess.run([*command, "--video", str(videos["mkv"]), "-p", "Apa?"], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert one_shot.returncode == 0 and one_shot.stdout.strip(), one_shot.stderr[-3000:]
    refused = subprocess.run(
        [*command, "--video", str(wav), "-p", "Apa?"], capture_output=True, text=True, timeout=300
    )
    assert (
        refused.returncode == 2
        and "mmmmodal chat: video 1 (" in refused.stderr
        and "no video stream" in refused.stderr
    )


def test_a_video_over_the_context_is_refused_before_any_encoder_runs(model, processor, videos):
    inputs = processor(text="<video> ?", videos=[videos["mp4"]], num_frames=60, return_tensors="pt")
    assert inputs["input_ids"].shape[1] > model.config.text_config.max_position_embeddings
    encoded = []
    towers = (model.model.vision_tower, model.model.audio_tower)
    handles = [tower.register_forward_hook(lambda *args: encoded.append(1)) for tower in towers]
    try:
        with pytest.raises(ValueError, match=r"sample 1: \d+ positions.*fewer video frames \(`num_frames`\)"):
            model.generate(**inputs, max_new_tokens=1)
    finally:
        for handle in handles:
            handle.remove()
    assert not encoded


def test_a_video_over_the_context_is_named_with_the_frames_that_would_fit(processor, videos):
    processor.tokenizer.model_max_length = 1024  # the context, where transformers keeps it
    with pytest.raises(ValueError) as refused:
        processor(text="Watch: <image> <video> What changed?", images=[random_image(0)], videos=[videos["mp4"]],
                  num_frames=60)  # fmt: skip
    message = str(refused.value)
    assert re.match(r"Sample 1 needs \d+ positions, more than the context of 1024: video 1 \(4\.0 s, 60 frames "
                    r"\+ soundtrack: \d+ positions\)\. num_frames=\d+ \(or max_frames=\d+ with fps\) would fit", message)  # fmt: skip
    fits = int(re.search(r"num_frames=(\d+)", message).group(1))
    inputs = processor(text="Watch: <image> <video> What changed?", images=[random_image(0)], videos=[videos["mp4"]],
                       num_frames=fits)  # fmt: skip
    assert len(inputs["input_ids"][0]) <= 1024  # the advice is right: that many fit, one more does not
    with pytest.raises(ValueError, match="more than the context of 1024"):
        processor(text="Watch: <image> <video> What changed?", images=[random_image(0)], videos=[videos["mp4"]],
                  num_frames=fits + 1)  # fmt: skip
    assert "pool_frames=True a quarter of each frame's slots" in message  # the third way, named
    pooled = processor(text="Watch: <image> <video> What changed?", images=[random_image(0)], videos=[videos["mp4"]],
                       num_frames=fits + 1, pool_frames=True)  # fmt: skip
    assert len(pooled["input_ids"][0]) < len(inputs["input_ids"][0])


def test_soundtracks_count_against_max_audio_seconds(session_processor, videos):
    limited = MMMModalProcessor(
        session_processor.image_processor, session_processor.feature_extractor, session_processor.tokenizer,
        patch_size=session_processor.patch_size, audio_conv_kernel=session_processor.audio_conv_kernel,
        audio_conv_stride=session_processor.audio_conv_stride, max_audio_seconds=5.0,
    )  # fmt: skip
    limited(text="<video>", videos=[videos["mp4"]], num_frames=2)  # 4 s of soundtrack: within 5 s
    with pytest.raises(MediaTooLargeError, match=r"Sample 1: its audio and its videos' soundtracks last \d+\.\d s, "):
        limited(text="<audio> <video>", audio=[random_clip(1, seconds=2.0)], videos=[videos["mp4"]], num_frames=2)
    limited(text="<video>", videos=[videos["mp4"]], num_frames=2, load_audio_from_video=False)
    with pytest.raises(MediaTooLargeError):
        limited(text="<video> <video>", videos=[videos["mp4"], videos["mkv"]], num_frames=2)
