"""What a conversation becomes, frozen before issue 48 moves training and the chat session onto one road.

For a set of conversations (text only; images and clips over three turns; a clip of three windows; a published-format
row), training's ids, labels and media and the chat session's ids per turn were recorded from the code as it stood
(`python tests/test_one_road_frozen.py` writes tests/frozen/one_road.json; run it only to record a change on purpose).
Any refactor of how conversations become model inputs must keep them.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmmmodal_hf.data import approximate_length, conversation_from_row, encode_conversation
from mmmmodal_hf.session import MMMModalChatSession

from tiny_parts import decodes, random_clip, random_image

FROZEN = Path(__file__).with_name("frozen") / "one_road.json"

# Each case: user turns as (text, images, clips), each answered by the assistant with its reference answer.
TURNS = {
    "text_only": [("Hello there.", [], []), ("Apa khabar?", [], [])],
    "media_over_three_turns": [
        ("Compare these.", ["a.png", "b.png"], ["one.wav"]),
        ("And now?", [], ["two.wav", "one.wav"]),
        ("Last one.", ["c.png"], []),
    ],
    "long_clip": [("Transcribe this.", [], ["long.wav"])],
}
ANSWERS = ["Blue.", "Tiga.", "Audio 1: high."]
PUBLISHED_ROW = {
    "conversations": [
        {"role": "user", "content": "<image> </image> <audio> </audio> Apa ini?"},
        {"role": "assistant", "content": "Gambar dan bunyi."},
        {"role": "user", "content": "<image> </image> Dan ini?"},
        {"role": "assistant", "content": "Segi empat."},
    ],
    "filename": ["a.png", "one.wav", "b.png"],
}


def write_media(folder: Path) -> Path:
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        random_image(seed + 10, size=(40 + 8 * seed, 30)).save(folder / name)
    for seed, (name, seconds) in enumerate((("one.wav", 0.6), ("two.wav", 1.3), ("long.wav", 2.5))):
        soundfile.write(folder / name, random_clip(seed + 20, seconds=seconds), 16000)
    return folder


def block_row(turns, folder: Path) -> dict:
    messages = []
    for (text, images, clips), answer in zip(turns, ANSWERS):
        media = [{"type": "image", "path": str(folder / i)} for i in images]
        media += [{"type": "audio", "path": str(folder / c)} for c in clips]
        messages += [
            {"role": "user", "content": [*media, {"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    return {"messages": messages}


def summary(encoded: dict) -> dict:
    labels = np.asarray(encoded["labels"])
    record = {
        "input_ids": [int(i) for i in encoded["input_ids"]],
        "answer_positions": np.flatnonzero(labels != -100).tolist(),
    }
    for key in ("pixel_values", "input_features", "input_features_mask"):
        if key in encoded:
            values = np.asarray(encoded[key], dtype=np.float64)
            record[key] = {"shape": list(values.shape), "sum": round(float(values.sum()), 2)}
    return record


def conversations(folder: Path) -> dict:
    rows = {name: block_row(turns, folder) for name, turns in TURNS.items()}
    rows["published_row"] = PUBLISHED_ROW
    return {name: conversation_from_row(row, base_dir=str(folder), row_id=name) for name, row in rows.items()}


def training_records(processor, folder: Path) -> dict:
    return {
        name: summary(encode_conversation(processor, conversation))
        for name, conversation in conversations(folder).items()
    }


def shortened_records(processor, folder: Path) -> dict:
    """What a `block_size` that drops the last exchange, then the last two, leaves; every text token labelled once."""
    records = {}
    for name in ("media_over_three_turns", "published_row"):
        conversation = conversations(folder)[name]
        full = len(encode_conversation(processor, conversation)["input_ids"])
        records[name] = [summary(encode_conversation(processor, conversation, block_size=full - 1))]
        if name == "media_over_three_turns":
            second = len(records[name][0]["input_ids"])
            records[name].append(summary(encode_conversation(processor, conversation, block_size=second - 1)))
        records[name].append(summary(encode_conversation(processor, conversation, train_on="all")))
    return records


def approximate_lengths(processor, folder: Path) -> dict:
    return {name: approximate_length(processor, conversation) for name, conversation in conversations(folder).items()}


def session_records(model, processor, folder: Path) -> dict:
    """Each turn's prompt ids as the session built them; the reply forced to two known tokens, so no weights matter."""
    forced = processor.tokenizer.convert_tokens_to_ids("▁Ya")
    records = {}
    for name, turns in TURNS.items():
        session = MMMModalChatSession(model, processor, max_new_tokens=2, sequence_bias={(forced,): 100.0})
        records[name] = []
        for text, images, clips in turns:
            session.send(text, images=[str(folder / i) for i in images], audio=[str(folder / c) for c in clips])
            records[name].append({"ids": session._cached_ids, "prefill": session.last_prefill_tokens})
    return records


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return write_media(tmp_path_factory.mktemp("one_road"))


def test_training_encodes_as_frozen(session_processor, media):
    frozen = json.loads(FROZEN.read_text())["training"]
    records = training_records(session_processor, media)
    assert records.keys() == frozen.keys()
    for name, record in records.items():
        for key, value in record.items():  # ids exactly; media by shape, and their sums to float rounding
            expected = frozen[name][key]
            if isinstance(value, dict):
                assert value["shape"] == expected["shape"] and value["sum"] == pytest.approx(expected["sum"], abs=0.05)
            else:
                assert value == expected, (name, key)
        assert record.keys() == frozen[name].keys(), name


def test_shortened_and_all_token_encodings_as_frozen(session_processor, media):
    frozen = json.loads(FROZEN.read_text())["shortened"]
    records = shortened_records(session_processor, media)
    assert records.keys() == frozen.keys()
    for name, encodings in records.items():
        assert len(encodings) == len(frozen[name])
        for record, expected in zip(encodings, frozen[name]):
            assert record["input_ids"] == expected["input_ids"] and record.keys() == expected.keys(), name
            assert record["answer_positions"] == expected["answer_positions"], name
            for key in record.keys() - {"input_ids", "answer_positions"}:
                assert record[key]["shape"] == expected[key]["shape"], (name, key)
                assert record[key]["sum"] == pytest.approx(expected[key]["sum"], abs=0.05), (name, key)


def test_approximate_lengths_as_frozen(session_processor, media):
    assert approximate_lengths(session_processor, media) == json.loads(FROZEN.read_text())["approximate_lengths"]


def test_the_chat_session_builds_its_turns_as_frozen(model, session_processor, media):
    frozen = json.loads(FROZEN.read_text())["session"]
    assert session_records(model, session_processor, media) == frozen


def test_each_medium_is_decoded_once_per_conversation(model, session_processor, media):
    every_medium = Counter(i for turn in TURNS["media_over_three_turns"] for i in [*turn[1], *turn[2]])
    conversation = conversations(media)["media_over_three_turns"]
    with decodes() as opened:  # shortened twice: measured by the media's slots, not by decoding them again
        encode_conversation(session_processor, conversation, block_size=70)
    assert opened == every_medium
    with decodes() as opened:
        approximate_length(session_processor, conversation)
    assert not opened
    with decodes() as opened:  # earlier turns' media are in the cache: never decoded again
        session_records(model, session_processor, media)
    assert opened == every_medium + Counter(TURNS["long_clip"][0][2])


if __name__ == "__main__":  # record (only on purpose): python tests/test_one_road_frozen.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

    from tiny_parts import tiny_model, tiny_processor

    with tempfile.TemporaryDirectory() as scratch:
        processor = tiny_processor(mistral_tokenizer_folder(Path(scratch) / "tokenizer"))
        folder = write_media(Path(scratch))
        records = {
            "training": training_records(processor, folder),
            "shortened": shortened_records(processor, folder),
            "approximate_lengths": approximate_lengths(processor, folder),
            "session": session_records(tiny_model(processor), processor, folder),
        }
    FROZEN.parent.mkdir(exist_ok=True)
    FROZEN.write_text(json.dumps(records) + "\n")
    print(f"wrote {FROZEN}")
