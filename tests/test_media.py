"""Real files in real formats, and the errors users get when media are wrong."""

import base64
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mmmmodal_hf import load_audio, load_image
from mmmmodal_hf.media_mmmmodal import NotAudioError

from tiny_parts import IMAGE_SLOTS, random_clip


def write_images(folder):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    paths = {
        "png": folder / "rgb.png",
        "jpeg": folder / "photo.jpg",
        "rgba": folder / "alpha.png",
        "grayscale": folder / "gray.png",
        "palette": folder / "palette.gif",
    }
    rgb.save(paths["png"])
    rgb.save(paths["jpeg"], quality=90)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))))
    rgba.save(paths["rgba"])
    rgb.convert("L").save(paths["grayscale"])
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(paths["palette"])
    return paths


def write_audio(folder):
    paths = {"wav_8k": folder / "phone.wav", "wav_44k_stereo": folder / "music.wav", "flac": folder / "speech.flac"}
    soundfile.write(paths["wav_8k"], random_clip(0, seconds=0.5, rate=8000), 8000, subtype="PCM_16")
    stereo = np.stack([random_clip(1, seconds=0.5, rate=44100), random_clip(2, seconds=0.5, rate=44100)], axis=1)
    soundfile.write(paths["wav_44k_stereo"], stereo, 44100)
    soundfile.write(paths["flac"], random_clip(3, seconds=0.7, rate=16000), 16000, format="FLAC")
    return paths


def test_every_image_format_loads_as_rgb(tmp_path):
    paths = write_images(tmp_path)
    for kind, path in paths.items():
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (40, 30), kind
    # Transparency is composited over white: fully transparent pixels become white.
    assert load_image(paths["rgba"]).getpixel((0, 0)) == (255, 255, 255)
    grey = np.asarray(load_image(paths["grayscale"]))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_images_as_arrays_tensors_and_bytes(tmp_path):
    paths = write_images(tmp_path)
    reference = np.asarray(load_image(paths["png"]))
    assert np.array_equal(np.asarray(load_image(reference)), reference)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(reference.copy()).permute(2, 0, 1))), reference)
    assert np.array_equal(np.asarray(load_image(reference.astype(np.float32) / 255.0)), reference)
    assert np.array_equal(np.asarray(load_image(paths["png"].read_bytes())), reference)


def test_data_urls_are_read_as_the_bytes_they_hold(processor, tmp_path):
    """`data:...;base64,` URLs, as browsers and OpenAI-style clients send media and transformers' `load_image` takes
    them. Found: read as a file name ("no such file: data:image/png;base64,...")."""
    from mmmmodal_hf.media_mmmmodal import CorruptMediaError

    image, audio = write_images(tmp_path)["png"], write_audio(tmp_path)["flac"]
    as_url = {path: f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode() for path, kind in
              ((image, "image/png"), (audio, "audio/flac"))}  # fmt: skip
    assert np.array_equal(np.asarray(load_image(as_url[image])), np.asarray(load_image(image)))
    assert np.array_equal(load_audio(as_url[audio], 16000), load_audio(audio, 16000))
    chat = [{"role": "user", "content": [{"type": "image", "url": as_url[image]}, {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True)
    assert np.array_equal(inputs["pixel_values"], processor(text="<image> ?", images=[image])["pixel_values"])
    with pytest.raises(CorruptMediaError, match="the data URL holds no base64 data"):
        load_image("data:image/png;base64,not base64!")


def test_images_as_datasets_stores_them(tmp_path):
    """datasets keeps an image it has not decoded (an `Image` feature read with `decode=False`, or a PIL image in a
    content block, which it stores as a struct) as `{"bytes", "path"}`, as it keeps audio; both are taken."""
    import datasets

    paths = write_images(tmp_path)
    reference = np.asarray(load_image(paths["png"]))
    stored = datasets.Image().encode_example(Image.fromarray(reference))
    assert set(stored) == {"bytes", "path"} and stored["path"] is None
    assert np.array_equal(np.asarray(load_image(stored)), reference)
    assert np.array_equal(np.asarray(load_image({"bytes": None, "path": str(paths["png"])})), reference)


def test_audio_files_are_resampled_and_downmixed(tmp_path):
    paths = write_audio(tmp_path)
    expected_samples = {"wav_8k": 8000, "wav_44k_stereo": 8000, "flac": 11200}
    for kind, path in paths.items():
        waveform = load_audio(path, 16000)
        assert waveform.ndim == 1 and waveform.dtype == np.float32, kind
        assert abs(waveform.shape[0] - expected_samples[kind]) <= 2, (kind, waveform.shape)
    stereo, rate = soundfile.read(paths["wav_44k_stereo"], dtype="float32")
    mono_at_source = load_audio(stereo.T, 44100, sampling_rate=44100)
    assert np.allclose(mono_at_source, stereo.mean(axis=1), atol=1e-6)


def test_audio_arrays_and_tensors_of_the_same_samples_are_the_same_clip(tmp_path):
    """Integer samples in numpy or torch are the clip a PCM file of them is (libsndfile's scale: unsigned centred,
    / 2^(bits-1)). Found: an int16 tensor's samples reached the processor unscaled (20,000 where numpy's gave 0.61),
    and numpy's were divided by 2^(bits-1) - 1, a uint8 clip left off-centre."""
    samples = (np.sin(np.arange(1600) / 10) * 20000).astype(np.int16)
    for name, given, subtype in (("int16", samples, "PCM_16"), ("int32", samples.astype(np.int32) << 16, "PCM_32"),
                                 ("uint8", (samples // 256 + 128).astype(np.uint8), "PCM_U8")):  # fmt: skip
        as_file = (given.astype(np.int16) - 128) * 256 if name == "uint8" else given  # soundfile writes signed values
        soundfile.write(tmp_path / f"{name}.wav", as_file, 16000, subtype=subtype)
        expected = load_audio(tmp_path / f"{name}.wav", 16000)
        assert np.array_equal(load_audio(given, 16000, sampling_rate=16000), expected), name
        assert np.array_equal(load_audio(torch.from_numpy(given), 16000, sampling_rate=16000), expected), name
    as_floats = torch.from_numpy(samples.astype(np.float32) / 32768).to(torch.bfloat16)
    assert np.allclose(
        load_audio(as_floats, 16000, sampling_rate=16000), load_audio(tmp_path / "int16.wav", 16000), atol=5e-3
    )


@pytest.mark.parametrize("name, codec, container", [("memo.m4a", "aac", "ipod"), ("recording.webm", "libopus", "webm"),
                                                   ("album.m4a", "aac", "mp4")])  # fmt: skip
def test_audio_that_libsndfile_cannot_read_is_read_through_ffmpeg(
    processor, tmp_path, monkeypatch, name, codec, container
):
    """Phones' voice memos (AAC in m4a, with an album picture too) and browsers' recordings (Opus in webm): found
    refused as "not a readable audio file". With PyAV (the [video] extra) FFmpeg reads them; a video is still no
    audio; without PyAV the refusal names it."""
    pytest.importorskip("av", reason="FFmpeg's formats need PyAV")
    from video_files import write_sound, write_video

    rate = 48000 if codec == "libopus" else 44100
    path = write_sound(tmp_path / name, codec, container, rate=rate, cover_art=name == "album.m4a")
    waveform = load_audio(path, 16000)
    assert abs(len(waveform) - 16000) < 1100  # one second, give or take the codec's priming and padding
    loudest = int(np.argmax(np.abs(waveform))) / 16000
    assert 0.25 < loudest < 0.65, loudest  # the beep, at 0.3 s for 0.3 s, where it was
    inputs = processor(text="<audio> Apa?", audio=[path.read_bytes()])  # bytes as files: the same reading
    assert len(inputs["input_features"]) == processor.num_audio_windows(len(load_audio(path, 16000)))
    with pytest.raises(NotAudioError, match=r"^not a readable audio file: it is a video \(give it as a video\)$"):
        load_audio(write_video(tmp_path / "clip.mp4", seconds=2.0), 16000)
    monkeypatch.setitem(sys.modules, "av", None)  # as where PyAV is not installed
    with pytest.raises(
        NotAudioError,
        match=r'not a readable audio file .*; m4a, webm and more need PyAV: pip install av \(or "mmmmodal-hf\[video\]"\)$',
    ):
        load_audio(path, 16000)


@pytest.fixture
def media_site(tmp_path):
    """`python -m http.server` on 127.0.0.1 serving `tmp_path`: its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    site = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        site.terminate()
        site.wait(timeout=10)


def test_urls_are_fetched_and_decoded_as_the_files_are(processor, tmp_path, media_site):
    """Over HTTP the same decoders and checks apply as on disk: resampling, the pixel limit from the header
    (before decoding), and a missing page or a page that is no image named as such."""
    images, clips = write_images(tmp_path), write_audio(tmp_path)
    for path in (images["png"], images["palette"]):
        assert np.array_equal(np.asarray(load_image(f"{media_site}/{path.name}")), np.asarray(load_image(path)))
    for path in clips.values():
        assert np.array_equal(load_audio(f"{media_site}/{path.name}", 16000), load_audio(path, 16000))
    with pytest.raises(ValueError, match=r"refused: 40x30 = 1,200 pixels is more than the limit of 1,000"):
        load_image(f"{media_site}/rgb.png", max_pixels=1000)
    with pytest.raises(
        ValueError, match=r"Sample 1, audio 1 \('http.*/gone.wav'\): the URL could not be fetched \(HTTP 404"
    ):
        processor(text="<audio>", audio=f"{media_site}/gone.wav")
    (tmp_path / "page.png").write_text("<html>not an image</html>")
    with pytest.raises(ValueError, match=r"Sample 1, image 1 .*: not a readable image"):
        processor(text="<image>", images=f"{media_site}/page.png")


def test_processor_takes_every_format_from_disk(processor, tmp_path):
    images, clips = write_images(tmp_path), write_audio(tmp_path)
    text = " ".join(["<image>"] * len(images) + ["<audio>"] * len(clips))
    out = processor(text=text, images=list(images.values()), audio=list(clips.values()), return_tensors="pt")
    assert out["pixel_values"].shape == (5, 3, 32, 32)
    assert out["input_features"].shape == (3, 80, 100)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 5 * IMAGE_SLOTS
    # Each clip's real length shows in its frame mask: 0.5 s -> 50 of 100 frames; padding slots are
    # dropped: 50 frames -> 25 encoder frames -> ceil(25 / 3) = 9 slots, 70 -> 35 -> 12.
    assert out["input_features_mask"].sum(-1).tolist() == [50, 50, 70]
    assert int((out["input_ids"] == processor.audio_token_id).sum()) == 9 + 9 + 12


def test_kind_is_read_from_the_bytes_not_the_extension(processor, tmp_path):
    disguised = tmp_path / "actually_a_png.wav"
    Image.new("RGB", (8, 8), "red").save(disguised, format="PNG")
    assert load_image(disguised).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match=r"Sample 1, audio 1 .*actually_a_png.wav.*not a readable audio file"):
        processor(text="<audio>", audio=disguised)


@pytest.mark.parametrize(
    "texts, images, message",
    [
        (["<image> <image>"], [[1]], r"Sample 1 has 2 <image> placeholder\(s\) but 1 image\(s\) were given"),
        (["<image>", "<image><image>"], ["a", "b"], r"Sample 2 has 2 <image> placeholder\(s\) but only 1 of the 2"),
        (["no placeholder"], ["a"], r"1 image\(s\) were given but the text holds only 0 <image> placeholder"),
        (["<image>", "x"], [["a"]], r"Images were given for 1 samples, but the text holds 2 samples"),
        (["x </image>"], None, r"Sample 1: '</image>' at character 2 closes a medium that was never opened"),
    ],
)
def test_placeholder_media_mismatch_names_the_sample(processor, texts, images, message):
    with pytest.raises(ValueError, match=message):
        processor(text=texts, images=images)


def test_unreadable_image_file_names_sample_and_item(processor, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    with pytest.raises(ValueError, match=r"Sample 2, image 2 \('.*broken.png'\): not a readable image"):
        processor(text=["<image>", "<image> <image>"], images=[[good], [good, broken]])
    with pytest.raises(ValueError, match=r"Sample 1, image 1 .*no such file"):
        processor(text="<image>", images=tmp_path / "missing.png")


def test_empty_audio_names_sample_and_item(processor, tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"Sample 1, audio 2 \('.*empty.wav'\): the audio is empty"):
        processor(text="<audio> <audio>", audio=[random_clip(0), empty])
    with pytest.raises(ValueError, match=r"Sample 2, audio 1 .*: the audio is empty"):
        processor(text=["x", "<audio>"], audio=[[], [np.zeros(0, dtype=np.float32)]])


def test_non_finite_audio_is_refused(processor):
    clip = random_clip(0)
    clip[10] = np.nan
    with pytest.raises(ValueError, match=r"Sample 1, audio 1 .*NaN or infinite"):
        processor(text="<audio>", audio=clip)


def test_unsupported_items_are_named_in_the_error(processor):
    with pytest.raises(ValueError, match=r"Sample 1, image 1 \(<ndarray \(\)>\): an image array must be"):
        processor(text="<image>", images=[np.array(3.0)])
    with pytest.raises(ValueError, match=r"Sample 1, audio 1 \(<int>\): audio must be a path"):
        processor(text="<audio>", audio=[7])


def test_each_problem_has_its_type_and_keeps_it_through_the_processor(processor, tmp_path):
    """Callers branch on the problem's type (web's upload check does), never on message text; the messages stay."""
    from mmmmodal_hf.media_mmmmodal import (
        CorruptMediaError,
        MediaError,
        MediaNotFoundError,
        MediaTooLargeError,
        NotAnImageError,
        NotAudioError,
    )
    from mmmmodal_hf.web import media_kind

    (tmp_path / "text.png").write_text("not an image at all")
    Image.new("RGB", (64, 64)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    soundfile.write(tmp_path / "tone.wav", random_clip(0), 16000)
    cases = [
        (lambda: load_image(tmp_path / "missing.png"), MediaNotFoundError, "no such file"),
        (lambda: load_image(tmp_path / "text.png"), NotAnImageError, "not a readable image"),
        (lambda: load_image(tmp_path / "cut.png"), CorruptMediaError, "corrupt or truncated"),
        (lambda: load_image(tmp_path / "whole.png", max_pixels=100), MediaTooLargeError, "more than the limit"),
        (lambda: load_audio(tmp_path / "text.png", 16000), NotAudioError, "not a readable audio file"),
        (lambda: load_audio(np.zeros(0, dtype=np.float32), 16000, 16000), CorruptMediaError, "empty"),
        (lambda: load_audio(np.zeros((2, 2, 2)), 16000, 16000), MediaError, "1-D"),
    ]
    for load, kind, words in cases:
        with pytest.raises(kind, match=words):
            load()
    with pytest.raises(NotAnImageError, match=r"Sample 1, image 1 .*not a readable image"):
        processor(text="<image>", images=[str(tmp_path / "text.png")])
    with pytest.raises(CorruptMediaError, match=r"Sample 1, audio 1 .*empty"):
        processor(text="<audio>", audio=[np.zeros(0, dtype=np.float32)], sampling_rate=16000)
    assert media_kind(str(tmp_path / "whole.png")) == "image" and media_kind(str(tmp_path / "tone.wav")) == "audio"
    with pytest.raises(CorruptMediaError, match="cut.png: the image data is corrupt"):
        media_kind(str(tmp_path / "cut.png"))
    with pytest.raises(MediaError, match="neither an image, audio nor a video"):
        media_kind(str(tmp_path / "text.png"))
