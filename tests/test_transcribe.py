"""`mmmmodal data transcribe`: a tiny Whisper built from a config, generated WAVs (one over 30 s), the threshold applied."""

import json

import numpy as np
import soundfile
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mmmmodal_hf.cli import main as cli
from mmmmodal_hf.datatools.transcribe import audio_files, transcribe
from mmmmodal_hf.datatools.validate import validate_dataset

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|ms|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip


def tiny_whisper(folder):
    """A byte-level Whisper tokenizer (256 bytes + the special tokens) and a 1-layer Whisper, random weights."""
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIALS)})
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    end, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64, pad_token_id=end, bos_token_id=end,
        eos_token_id=end, decoder_start_token_id=start,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})  # already in the vocabulary
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # sharper output distributions, so that files score differently
        model.model.decoder.embed_tokens.weight.mul_(8)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, is_multilingual=False,
        no_timestamps_token_id=vocab["<|notimestamps|>"], begin_suppress_tokens=[],
        suppress_tokens=[vocab[token] for token in SPECIALS[1:]],  # text only (and the end token)
    )  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def write_clips(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, seconds in enumerate((2.0, 5.5, 11.0, 45.0)):  # the last one needs two 30 s chunks
        t = np.arange(int(seconds * 16000)) / 16000
        clip = 0.3 * np.sin(2 * np.pi * (200 + 150 * index) * t) + 0.05 * rng.standard_normal(t.shape)
        soundfile.write(folder / f"clip{index}.wav", clip.astype(np.float32), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    return folder


def test_transcribe_scores_every_file_and_applies_the_threshold(tmp_path, session_processor):
    model = str(tiny_whisper(tmp_path / "whisper"))
    files = audio_files(write_clips(tmp_path / "audio"))
    assert [f.name for f in files] == ["broken.wav", "clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav"]

    everything = tmp_path / "all.jsonl"
    result = transcribe(files, model, everything, threshold=-float("inf"), batch_size=2, max_new_tokens=8)
    assert result["unreadable"] == 1
    rows = [json.loads(line) for line in everything.read_text().splitlines()]
    assert len(rows) == 4 and result["kept"] == 4 and result["empty"] == 0
    assert all(row["score"] <= 0 for row in rows)
    by_file = {row["filename"][0]: row for row in rows}
    assert by_file["audio/clip3.wav"]["chunks"] >= 2  # 45 s went through in chunks
    assert all(by_file[name]["chunks"] == 1 for name in by_file if name != "audio/clip3.wav")
    assert rows[0]["conversations"][0]["content"].startswith("<audio> </audio>\n")

    # A threshold between the scores keeps exactly the files at or above it.
    scores = sorted(row["score"] for row in rows)
    threshold = (scores[0] + scores[-1]) / 2
    kept_file = tmp_path / "kept.jsonl"
    code = cli(["data", "transcribe", str(tmp_path / "audio"), "--model", model, "--output", str(kept_file),
                "--threshold", str(threshold), "--batch-size", "3", "--max-new-tokens", "8"])  # fmt: skip
    assert code == 0
    kept = [json.loads(line) for line in kept_file.read_text().splitlines()]
    assert sorted(r["filename"][0] for r in kept) == sorted(r["filename"][0] for r in rows if r["score"] >= threshold)
    assert 0 < len(kept) < len(rows)
    # The rows are training data: files decode as audio behind audio tags.
    assert validate_dataset(kept_file, session_processor, block_size=8192).ok


def test_what_transcribe_cannot_use_is_one_line(tmp_path, base_folder, capsys):
    """Refused before any file is transcribed: a model that is no encoder-decoder speech model (an MMMModal folder),
    a folder that is not there, audio that is not there or a folder without audio, an output it cannot write."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "a.wav", np.zeros(1600, np.float32), 16000)
    audio = str(tmp_path / "audio")
    refused = {
        (audio, "--model", str(base_folder)): f"{str(base_folder)!r} is a mmmmodal model; transcribe needs an "
        "encoder-decoder speech model such as Whisper",
        (audio, "--model", "./no_whisper"): "cannot load a Whisper checkpoint from './no_whisper': no such folder",
        (str(tmp_path / "nothere"), "--model", "./no_whisper"): f"no such file or folder: {tmp_path / 'nothere'}",
        (str(tmp_path / "empty"), "--model", "./no_whisper"): f"{tmp_path / 'empty'} holds no audio files (.aac, "
        ".aif, .aiff, .flac, .m4a, .mp3, .ogg, .opus, .wav, .webm)",
    }
    for args, said in refused.items():
        code = cli(["data", "transcribe", *args, "--output", str(tmp_path / "rows.jsonl")])
        error = capsys.readouterr().err.strip()
        assert code == 1 and error == f"mmmmodal data: {said}", error
    assert cli(["data", "transcribe", audio, "--model", "./no_whisper", "--output", str(tmp_path / "rows.csv")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"mmmmodal data: --output {tmp_path / 'rows.csv'}: write a .jsonl or .parquet file"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audio", "empty"]  # nothing written
