"""Training data: both row formats, exact label masks, padding, truncation by whole turns, packing."""

import base64
import json

import numpy as np
import pytest
import soundfile
import torch

from mmmmodal_hf.cli_errors import InputError
from mmmmodal_hf.collator import MMMModalDataCollator, MMMModalPackingCollator
from mmmmodal_hf.data import (
    ConversationDataset,
    EncodeStats,
    LengthGroupedBatchSampler,
    StreamingConversationDataset,
    UnusableRow,
    conversation_from_row,
    encode_conversation,
    load_rows,
    row_conversation,
)

from tiny_parts import CLIP_SLOTS, IMAGE_SLOTS, random_clip, random_image


@pytest.fixture
def media_folder(tmp_path):
    random_image(1).save(tmp_path / "one.png")
    random_image(2).save(tmp_path / "two.jpg")
    soundfile.write(tmp_path / "beep.wav", random_clip(3), 16000)
    return tmp_path


def published_row():
    return {
        "conversations": [
            {"role": "user", "content": "<image> </image><image> </image> Apa beza dua gambar ini?"},
            {"role": "assistant", "content": "Yang pertama merah."},
            {"role": "user", "content": "<audio> </audio> Dan bunyi ini?"},
            {"role": "assistant", "content": "Bunyi tinggi."},
        ],
        "filename": ["one.png", "two.jpg", "beep.wav"],
    }


def decode_labels(processor, encoded):
    kept = [int(t) for t in encoded["labels"] if t != -100]
    return processor.tokenizer.decode(kept)


def test_labels_cover_exactly_the_answers(processor, media_folder):
    conversation = conversation_from_row(published_row(), str(media_folder), "row-0")
    assert [p.endswith(n) for p, n in zip(conversation.images, ["one.png", "two.jpg"])] == [True, True]
    encoded = encode_conversation(processor, conversation)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert encoded["pixel_values"].shape[0] == 2 and encoded["input_features"].shape[0] == 1
    assert (ids == processor.image_token_id).sum() == 2 * IMAGE_SLOTS
    assert (ids == processor.audio_token_id).sum() == CLIP_SLOTS
    # Exactly the answer tokens and their </s>, in two contiguous runs; nothing of prompts, tags or slots.
    assert processor.tokenizer.decode([int(t) for t in labels if t != -100]) == (
        "Yang pertama merah.</s>Bunyi tinggi.</s>"
    )
    kept_positions = np.flatnonzero(labels != -100)
    assert (np.diff(kept_positions) != 1).sum() == 1, "answers should form two runs"
    assert ids[kept_positions[-1]] == processor.tokenizer.eos_token_id and kept_positions[-1] == len(ids) - 1
    masked = labels == -100
    for token in (
        processor.image_token_id,
        processor.audio_token_id,
        processor.image_start_token_id,
        processor.audio_end_token_id,
        processor.tokenizer.bos_token_id,
    ):
        assert masked[ids == token].all()
    # Where labels are kept they equal the input ids.
    assert np.array_equal(labels[~masked], ids[~masked])


def test_training_on_the_whole_conversation_masks_only_slots(processor, media_folder):
    conversation = conversation_from_row(published_row(), str(media_folder))
    encoded = encode_conversation(processor, conversation, train_on="all")
    ids, labels = encoded["input_ids"], encoded["labels"]
    slots = (ids == processor.image_token_id) | (ids == processor.audio_token_id)
    assert (labels[slots] == -100).all() and np.array_equal(labels[~slots], ids[~slots])


def test_content_block_rows_match_published_rows(processor, media_folder):
    blocks = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "path": "one.png"}, {"type": "text", "text": "Apa ini?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Bulatan."}]},
        ]
    }
    encoded = encode_conversation(processor, conversation_from_row(blocks, str(media_folder)))
    assert decode_labels(processor, encoded).replace(" ", "") == "Bulatan.</s>"
    assert encoded["pixel_values"].shape[0] == 1


def test_content_blocks_hold_media_under_every_key_the_chat_template_takes(processor, media_folder):
    """Their type's key, "path", "url" or "base64" (a data URL too), as `apply_chat_template` takes them: the same
    inputs. Found: training rows refused a base64 medium that the processor's chat template took."""
    image, clip = (media_folder / "one.png").read_bytes(), (media_folder / "beep.wav").read_bytes()
    as_text = {name: base64.b64encode(data).decode() for name, data in (("image", image), ("audio", clip))}

    def encoded(image_block: dict, audio_block: dict) -> dict:
        content = [{"type": "image", **image_block}, {"type": "audio", **audio_block}, {"type": "text", "text": "?"}]
        row = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "Bulat."}]}
        return encode_conversation(processor, conversation_from_row(row, str(media_folder)))

    expected = encoded({"path": "one.png"}, {"path": "beep.wav"})
    for given in (encoded({"image": "one.png"}, {"audio": "beep.wav"}),
                  encoded({"base64": as_text["image"]}, {"base64": f"data:audio/wav;base64,{as_text['audio']}"})):  # fmt: skip
        assert all(np.array_equal(given[key], expected[key]) for key in expected), sorted(expected)
    with pytest.raises(UnusableRow, match=r"^row \?: An audio block needs one of 'audio', 'path', 'url' or 'base64'"):
        encoded({"path": "one.png"}, {"text": "no source"})


def test_truncation_drops_whole_trailing_turns_and_their_media(processor, media_folder):
    conversation = conversation_from_row(published_row(), str(media_folder))
    full = encode_conversation(processor, conversation)
    stats = EncodeStats()
    # Room for the first exchange only: the audio turn goes, with its clip, and no span is cut.
    short = encode_conversation(processor, conversation, block_size=len(full["input_ids"]) - 5, stats=stats)
    assert stats.truncated == 1
    assert "input_features" not in short and short["pixel_values"].shape[0] == 2
    assert (short["input_ids"] == processor.image_token_id).sum() == 2 * IMAGE_SLOTS
    assert decode_labels(processor, short).replace(" ", "") == "Yangpertamamerah.</s>"
    with pytest.raises(UnusableRow, match="even with one exchange; block_size is 20"):
        encode_conversation(processor, conversation, block_size=20)


def test_padding_collator_right_pads(processor, media_folder):
    rows = [
        published_row(),
        {"conversations": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Hai juga"}]},
    ]
    samples = [encode_conversation(processor, conversation_from_row(r, str(media_folder))) for r in rows]
    batch = MMMModalDataCollator(processor.tokenizer.pad_token_id)(samples)
    n0, n1 = len(samples[0]["input_ids"]), len(samples[1]["input_ids"])
    assert batch["input_ids"].shape == (2, n0)
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert (batch["labels"][1, n1:] == -100).all()
    assert (batch["input_ids"][1, n1:] == processor.tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == 2 and batch["input_features"].shape[0] == 1


def test_bad_rows_are_skipped_with_a_warning_naming_them(processor, media_folder, tmp_path, caplog):
    rows = [
        {
            "conversations": [{"role": "user", "content": "<image> x"}, {"role": "assistant", "content": "y"}],
            "filename": ["missing.png"],
        },
        {
            "conversations": [{"role": "user", "content": "<image> <image>"}, {"role": "assistant", "content": "y"}],
            "filename": ["one.png"],
        },
        published_row(),
    ]
    data_file = media_folder / "rows.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = ConversationDataset(load_rows(data_file), processor)
    with caplog.at_level("WARNING"):
        first = dataset[0]
    assert first["pixel_values"].shape[0] == 2  # row 2 served in place of the broken rows 0 and 1
    assert dataset.stats.skipped == 2 and dataset.stats.rows == 1
    assert "rows.jsonl:1" in caplog.text and "no such file" in caplog.text
    assert "rows.jsonl:2" in caplog.text and "more media tags than the 1 files" in caplog.text


@pytest.mark.parametrize("answer", ["", "  ", [{"type": "text", "text": ""}]], ids=["empty", "blank", "empty block"])
def test_an_empty_answer_is_an_unusable_row(answer):
    # The chat template renders an empty answer (a chat may hold one); training data must not.
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]}
    with pytest.raises(UnusableRow, match=r"row r7: message 2 \(assistant\) is empty"):
        conversation_from_row(row, row_id="r7")


def test_media_kind_comes_from_the_file_not_its_name(processor, media_folder):
    (media_folder / "one.png").rename(media_folder / "image_named.wav")
    row = {
        "conversations": [{"role": "user", "content": "<audio> what?"}, {"role": "assistant", "content": "y"}],
        "filename": ["image_named.wav"],
    }
    with pytest.raises(UnusableRow, match="not a readable audio file"):
        encode_conversation(processor, conversation_from_row(row, str(media_folder)))


@pytest.mark.parametrize("model_fixture", ["model", "indexed_model", "mixed_model"])
def test_packed_block_logits_equal_each_conversation_alone(model_fixture, session_processor, media_folder, request):
    # With ordinal embeddings, each packed conversation numbers its media from 1 again.
    # With the previous token mixed in, a packed conversation's first token sees none before it.
    model = request.getfixturevalue(model_fixture)
    rows = [
        published_row(),
        {
            "conversations": [
                {"role": "user", "content": "Hai, apa khabar?"},
                {"role": "assistant", "content": "Baik."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "audio", "path": "beep.wav"}, {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": "Bip."},
            ]
        },
    ]
    samples = [encode_conversation(session_processor, conversation_from_row(r, str(media_folder))) for r in rows]
    total = sum(len(s["input_ids"]) for s in samples)
    stats = EncodeStats()
    packed = MMMModalPackingCollator(session_processor.tokenizer.pad_token_id, block_size=8192, stats=stats)(samples)
    # One row, no padding tail, although the block (8192) is far longer than the LM's context (1024).
    assert packed["input_ids"].shape == (1, total) and "attention_mask" not in packed
    assert stats.as_logs()["data/padding_fraction"] == 0.0
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0]
        cursor = 0
        for sample in samples:
            alone = MMMModalDataCollator(session_processor.tokenizer.pad_token_id)([sample])
            alone_logits = model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
            n = len(sample["input_ids"])
            torch.testing.assert_close(packed_logits[cursor : cursor + n], alone_logits, atol=1e-4, rtol=1e-4)
            cursor += n
    # The loss over the packed block equals the loss over the padded batch.
    padded = MMMModalDataCollator(session_processor.tokenizer.pad_token_id)(samples)
    with torch.no_grad():
        torch.testing.assert_close(model(**packed, use_cache=False).loss, model(**padded).loss, atol=1e-5, rtol=1e-5)


def test_packed_loss_and_gradients_equal_the_conversations_one_by_one(session_processor, media_folder):
    from tiny_parts import tiny_model

    model = tiny_model(session_processor).train()
    rows = [
        published_row(),
        {
            "conversations": [
                {"role": "user", "content": "Hai?"},
                {"role": "assistant", "content": "Baik, terima kasih."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": "two.jpg"}, {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": "Gambar kedua."},
            ]
        },
    ]
    samples = [encode_conversation(session_processor, conversation_from_row(r, str(media_folder))) for r in rows]
    pad = session_processor.tokenizer.pad_token_id
    parameters = [p for p in model.parameters() if p.requires_grad]

    def loss_and_gradients(batches_and_weights):
        model.zero_grad()
        total = 0.0
        for batch, weight in batches_and_weights:
            loss = model(**batch, use_cache=False).loss * weight  # as the trainer runs it: no cache to hide the rows
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]

    packed = MMMModalPackingCollator(pad, block_size=8192)(samples)
    assert packed["input_ids"].shape[0] == 1
    packed_loss, packed_grads = loss_and_gradients([(packed, 1.0)])
    # One by one, each conversation's mean loss weighted by its share of the step's labelled tokens.
    counts = [int((np.asarray(s["labels"][1:]) != -100).sum()) for s in samples]
    alone = [(MMMModalDataCollator(pad)([s]), n / sum(counts)) for s, n in zip(samples, counts)]
    alone_loss, alone_grads = loss_and_gradients(alone)
    assert abs(packed_loss - alone_loss) < 1e-5
    for parameter_grad, expected in zip(packed_grads, alone_grads):
        torch.testing.assert_close(parameter_grad, expected, atol=1e-6, rtol=1e-4)
    assert any(float(g.abs().sum()) > 0 for g in packed_grads)


def test_a_step_longer_than_the_block_fills_rows_of_nearly_equal_length():
    lengths = [6, 5, 4, 3, 3]
    samples = [{"input_ids": np.arange(n), "labels": np.arange(n)} for n in lengths]
    stats = EncodeStats()
    packed = MMMModalPackingCollator(0, block_size=11, stats=stats)(samples)
    # 21 tokens in blocks of 11: rows of 11 (5 + 3 + 3) and 10 (6 + 4), each in the step's order; positions
    # restart for each conversation, and the one padding token is at position 0.
    assert packed["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2],
        [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0],
    ]
    assert stats.as_logs()["data/padding_fraction"] == round(1 / 22, 4)
    assert packed["labels"][1].tolist() == [-100, 1, 2, 3, 4, 5, -100, 1, 2, 3, -100]
    with pytest.raises(ValueError, match="conversation 2 of this step has 12 tokens, more than --block_size 11"):
        MMMModalPackingCollator(0, block_size=11)([samples[0], {"input_ids": np.arange(12), "labels": np.arange(12)}])


def test_balanced_rows_keep_every_conversation_once_and_under_the_block():
    from mmmmodal_hf.collator import balanced_rows

    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 900, size=int(rng.integers(1, 40))).tolist()
        rows = balanced_rows(lengths, 1024)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        totals = [sum(lengths[i] for i in row) for row in rows]
        assert max(totals) <= 1024 and all(totals)


def test_parquet_files_and_folders_of_mixed_formats(processor, media_folder):
    import datasets

    blocks_row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "path": "one.png"}, {"type": "text", "text": "Apa?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Bulat."}]},
        ]
    }
    datasets.Dataset.from_list([blocks_row, blocks_row]).to_parquet(str(media_folder / "blocks.parquet"))
    (media_folder / "published.jsonl").write_text(json.dumps(published_row()) + "\n")
    rows = load_rows(media_folder)
    assert len(rows) == 3
    assert {row["_row_id"] for row in rows} == {"blocks.parquet:1", "blocks.parquet:2", "published.jsonl:1"}
    dataset = ConversationDataset(rows, processor)
    encoded = [dataset[i] for i in range(3)]
    assert [e["pixel_values"].shape[0] for e in encoded] == [1, 1, 2]
    assert dataset.stats.skipped == 0
    # Iterating ends after the last row (the sequence protocol stops on IndexError), as
    # Trainer's length-grouped sampler does when it reads every row's length.
    assert [e["pixel_values"].shape[0] for e in dataset] == [1, 1, 2]
    assert dataset[-1]["pixel_values"].shape[0] == 2
    with pytest.raises(IndexError, match="row 3 of a data set of 3 rows"):
        dataset[3]


def test_a_folder_of_differently_shaped_files_reads_whole_and_streamed(processor, media_folder):
    """Rows in files of their own shapes: text turns, content blocks, blocks then text, the published format. Found:
    joined into one table (`concatenate_datasets`), a text-only file beside a file of blocks ended in "The features
    can't be aligned", and streamed, two files of blocks-then-text rows in pyarrow's ArrowInvalid; both tracebacks."""
    image_block = {"type": "image", "path": "one.png"}
    text_row = {"messages": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Hai juga."}]}
    blocks_row = {"messages": [{"role": "user", "content": [image_block, {"type": "text", "text": "Apa?"}]},
                               {"role": "assistant", "content": [{"type": "text", "text": "Bulat."}]}]}  # fmt: skip
    blocks_then_text = {"messages": [blocks_row["messages"][0], {"role": "assistant", "content": "Bulat."}]}
    files = {"text.jsonl": [text_row], "blocks.jsonl": [blocks_row], "mixed.jsonl": [blocks_then_text, published_row()],
             "more.jsonl": [blocks_then_text]}  # fmt: skip
    for name, rows in files.items():
        (media_folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    read, streamed = load_rows(media_folder), load_rows(media_folder, streaming=True)
    ids = ["blocks.jsonl:1", "mixed.jsonl:1", "mixed.jsonl:2", "more.jsonl:1", "text.jsonl:1"]
    assert [row["_row_id"] for row in streamed] == [row["_row_id"] for row in read] == ids
    assert len(read) == 5 and read[-1]["_row_id"] == read[4]["_row_id"] == "text.jsonl:1"
    for whole, stream in zip(read, streamed):
        assert row_conversation(stream, 0).messages == row_conversation(whole, 0).messages
    images = [[len(e.get("pixel_values", ())) for e in encoded] for encoded in
              (ConversationDataset(read, processor), StreamingConversationDataset(streamed, processor))]  # fmt: skip
    assert images == [[1, 1, 2, 1, 0]] * 2
    # Through a DataLoader's two workers (`--dataloader_num_workers 2`), each streams its files: every row comes once.
    # (Found: a file's own dataset split itself among the workers again, and the second worker's rows were lost.)
    loader = torch.utils.data.DataLoader(StreamingConversationDataset(streamed, processor), None, num_workers=2)
    assert sorted(encoded["input_ids"].tolist() for encoded in loader) == sorted(
        encoded["input_ids"].tolist() for encoded in ConversationDataset(read, processor)
    )


def test_a_json_document_of_one_row_is_that_row(processor, media_folder):
    """One conversation as a JSON document, indented, as `mmmmodal chat`'s `/save` writes it (a user turn of blocks,
    an answer as text). Found: `datasets` failed on it with a traceback ("Expected object or value")."""
    image_block = {"type": "image", "path": "one.png"}
    row = {"messages": [{"role": "user", "content": [image_block, {"type": "text", "text": "Apa?"}]},
                        {"role": "assistant", "content": "Bulat."}]}  # fmt: skip
    (media_folder / "one.json").write_text(json.dumps(row, indent=2))
    (media_folder / "one.jsonl").write_text(json.dumps(row) + "\n")
    expected = ConversationDataset(load_rows(media_folder / "one.jsonl"), processor)[0]
    for streaming in (False, True):
        read = list(load_rows(media_folder / "one.json", streaming=streaming))
        assert [r["_row_id"] for r in read] == ["one.json:1"] and read[0]["messages"] == row["messages"]
    assert ConversationDataset(load_rows(media_folder / "one.json"), processor)[0]["input_ids"].tolist() == (
        expected["input_ids"].tolist()
    )


def test_a_dataset_saved_by_datasets_save_to_disk_is_read_as_its_rows(processor, media_folder):
    """A folder `Dataset.save_to_disk` wrote is the data, read with `load_from_disk`, whole and streamed; its paths
    resolve against the folder that holds it, as a file's against its folder. Found: its `state.json` and
    `dataset_info.json` were read as two unusable rows and its Arrow file not at all. A `DatasetDict` is refused,
    naming its splits (training on all of them would train on the test split)."""
    import datasets

    rows = [
        published_row(),
        {"messages": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Hai."}]},
    ]
    rows = [
        {"conversations": row.get("conversations", row.get("messages")), "filename": row.get("filename", [])}
        for row in rows
    ]  # fmt: skip  (one table: the same columns in each row)
    (media_folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(media_folder / "saved"))
    expected = ConversationDataset(load_rows(media_folder / "rows.jsonl"), processor)
    for streaming in (False, True):
        read = load_rows(media_folder / "saved", streaming=streaming)
        assert [row["_row_id"] for row in read] == ["saved:1", "saved:2"]
        encoded = (StreamingConversationDataset if streaming else ConversationDataset)(read, processor)
        assert [e["input_ids"].tolist() for e in encoded] == [e["input_ids"].tolist() for e in expected]
    # In a folder beside a JSON Lines file: both are read, the saved dataset's own JSON files are not rows.
    ids = [row["_row_id"] for row in load_rows(media_folder)]
    assert ids == ["rows.jsonl:1", "rows.jsonl:2", "saved:1", "saved:2"]
    splits = {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    datasets.DatasetDict(splits).save_to_disk(str(media_folder / "more" / "splits"))
    for path in (media_folder / "more" / "splits", media_folder):
        with pytest.raises(InputError, match=r"splits test, train.*more/splits/train"):
            load_rows(path)


def test_images_that_datasets_stored_in_content_blocks_are_read(processor, media_folder):
    """A PIL image in a content block is kept by datasets as `{"bytes", "path"}` (saved to disk, or pushed as
    Parquet); such rows train and measure as rows that name the image's file. Found: refused as "an image must be a
    path, URL, bytes, ...; got dict"."""
    import datasets

    text = {"type": "text", "text": "Apa?", "image": None}
    user = {"role": "user", "content": [{"type": "image", "image": random_image(1), "text": None}, text]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Bulat.", "image": None}]}
    datasets.Dataset.from_list([{"messages": [user, answer]}]).save_to_disk(str(media_folder / "saved"))
    by_path = {"messages": [{"role": "user", "content": [{"type": "image", "path": "one.png"}, text]}, answer]}
    expected = ConversationDataset([dict(by_path, _base_dir=str(media_folder))], processor)[0]
    dataset = ConversationDataset(load_rows(media_folder / "saved"), processor)
    assert dataset.lengths() == [len(expected["input_ids"])]
    assert dataset[0]["input_ids"].tolist() == expected["input_ids"].tolist()
    assert np.array_equal(dataset[0]["pixel_values"], expected["pixel_values"])
    assert dataset[0]["labels"].tolist() == expected["labels"].tolist()


def test_a_data_url_in_a_row_is_the_medium_it_holds(processor, media_folder):
    """Found: a `data:` URL was taken for a path and joined to the data file's folder."""
    as_url = "data:image/png;base64," + base64.b64encode((media_folder / "one.png").read_bytes()).decode()
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", key: source}, {"type": "text", "text": "?"}]},
                          {"role": "assistant", "content": "Bulat."}], "_base_dir": str(media_folder)}
            for key, source in (("url", as_url), ("path", "one.png"))]  # fmt: skip
    assert row_conversation(rows[0], 0).images == [as_url]
    by_url, by_path = ConversationDataset(rows, processor)
    assert by_url["input_ids"].tolist() == by_path["input_ids"].tolist()
    assert np.array_equal(by_url["pixel_values"], by_path["pixel_values"])


def test_approximate_lengths_without_decoding_media(processor, media_folder):
    """Exact for images and text (their slots depend only on the processor); a clip counts one full
    window, which its trimmed padding can only shorten."""
    image_row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "path": "one.png"}, {"type": "text", "text": "Apa ini?"}]},
            {"role": "assistant", "content": "Bulatan."},
        ]
    }
    text_row = {"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]}
    broken_row = {"messages": [{"role": "narrator", "content": "Once upon a time."}]}
    rows = [dict(image_row, _base_dir=str(media_folder)), text_row, dict(published_row(), _base_dir=str(media_folder))]
    dataset = ConversationDataset(rows + [broken_row], processor)
    lengths = dataset.lengths()
    assert dataset.stats.rows == 0  # nothing was encoded to measure them
    encoded = [len(dataset[i]["input_ids"]) for i in range(3)]
    assert lengths[:2] == encoded[:2]
    assert encoded[2] <= lengths[2] <= encoded[2] + CLIP_SLOTS  # one clip, counted as a whole window
    assert lengths[3] == 0  # a row the template refuses: skipped when served


def test_length_grouped_batches_hold_like_lengths_in_random_order():
    lengths = [int(n) for n in np.random.default_rng(0).integers(40, 200, size=803)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16)
    torch.manual_seed(0)
    order = list(sampler)
    assert sorted(order) == list(range(803)) and len(sampler) == 803
    batches = [order[i : i + 16] for i in range(0, 800, 16)]

    def padding(batch):
        return 1 - sum(lengths[i] for i in batch) / (len(batch) * max(lengths[i] for i in batch))

    shuffled = np.random.default_rng(1).permutation(803)
    random_padding = np.mean([padding(shuffled[i : i + 16]) for i in range(0, 800, 16)])
    assert np.mean([padding(b) for b in batches]) < random_padding / 5  # about 0.3 for random batches
    # No sweep from long to short rows (Trainer's LengthGroupedSampler sorts each group of 50 batches
    # longest first): the longest row of each batch goes up as often as down from one batch to the next.
    longest = [max(lengths[i] for i in b) for b in batches]
    rises = sum(b > a for a, b in zip(longest, longest[1:]))
    assert 15 <= rises <= 34
    torch.manual_seed(1)
    assert list(sampler) != order  # a new order each epoch


def test_rows_are_named_by_their_line_whatever_lines_fail_or_are_blank(tmp_path):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        "",
        '{"messages": [{"role": "user", "content": "cut',
        "[1, 2]",
        json.dumps({"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    for streaming in (False, True):
        read = []
        for index, row in enumerate(load_rows(tmp_path / "rows.jsonl", streaming=streaming)):
            try:
                row_conversation(row, index)
                read.append(row["_row_id"])
            except UnusableRow as error:
                read.append(str(error))
        assert read == [
            "rows.jsonl:1",
            "row rows.jsonl:3: not valid JSON (Unterminated string starting at: column 43)",
            "row rows.jsonl:4: a JSON list, not an object",
            "rows.jsonl:5",
        ], streaming


def test_a_json_document_that_does_not_parse_is_named_with_where(tmp_path):
    (tmp_path / "rows.json").write_text('[{"messages": []},\n {"messages": ')
    with pytest.raises(InputError, match=r"rows.json: not valid JSON \(Expecting value: line 2 column 15\)"):
        load_rows(tmp_path / "rows.json")
    (tmp_path / "lines.json").write_text('{"messages": []}\n{"messages": \n')  # JSON Lines in a .json file
    assert [row.get("_unreadable") is not None for row in load_rows(tmp_path / "lines.json")] == [False, True]


def test_empty_files_hold_no_rows_and_a_data_set_of_unusable_rows_names_the_first(processor, media_folder, tmp_path):
    """An empty JSON Lines file (`datasets` stops with a bare StopIteration on one) is skipped, and data of nothing
    but empty files refused by name; when no row can be used the refusal says why the first was not."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.jsonl").write_text("")
    (tmp_path / "data" / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(InputError, match="^no rows in .*data$"):
        load_rows(tmp_path / "data")
    (tmp_path / "data" / "rows.jsonl").write_text(json.dumps(published_row()) + "\n")
    assert [row["_row_id"] for row in load_rows(tmp_path / "data")] == ["rows.jsonl:1"]

    missing = {"conversations": [{"role": "user", "content": "<image> x"}, {"role": "assistant", "content": "y"}],
               "filename": ["missing.png"]}  # fmt: skip
    (media_folder / "unusable.jsonl").write_text("\n".join(json.dumps(r) for r in (missing, published_row())) + "\n")
    dataset = ConversationDataset(load_rows(media_folder / "unusable.jsonl"), processor, block_size=8)
    with pytest.raises(
        InputError, match=r"^none of the 2 rows can be used \(the first refused: row unusable.jsonl:1: "
    ):
        dataset[0]


READ_HUB_ROWS = """
import json, sys
from mmmmodal_hf.data import load_rows
for name in sys.argv[1:]:
    try:
        print(json.dumps([dict(row) for row in load_rows(name)]))
    except Exception as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
"""


def test_a_hub_dataset_id_is_its_repo_read_as_a_folder(processor, media_folder, tmp_path):
    """`--data owner/name` (train, eval, validate): the dataset repo is downloaded (from a stand-in for the Hub on
    127.0.0.1, tests/hub_double.py) and read as a local folder, its rows' paths finding the repo's media; later
    offline from the cache. Of several splits (datasets' file-name conventions) one is named, `owner/name:split`."""
    import subprocess
    import sys

    from hub_double import hub_serving, reaching

    repo = media_folder / "repo"
    repo.mkdir()
    for name in ("one.png", "two.jpg", "beep.wav"):
        (repo / "media").mkdir(exist_ok=True)
        (repo / "media" / name).write_bytes((media_folder / name).read_bytes())
    row = dict(published_row(), filename=[f"media/{name}" for name in published_row()["filename"]])
    text_row = {"conversations": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Hai."}]}
    (repo / "rows.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(text_row) + "\n")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# rows\n")
    (repo / "media" / "test_tone.wav").write_bytes((media_folder / "beep.wav").read_bytes())  # a split's name: no rows
    splits = media_folder / "splits"
    (splits / "data").mkdir(parents=True)
    (splits / "data" / "train.jsonl").write_text(json.dumps(text_row) + "\n")
    (splits / "data" / "test.jsonl").write_text(json.dumps(text_row) + "\n" + json.dumps(text_row) + "\n")
    (media_folder / "rows.jsonl").write_text(json.dumps(published_row()) + "\n" + json.dumps(text_row) + "\n")
    expected = ConversationDataset(load_rows(media_folder / "rows.jsonl"), processor)

    def read(env: dict, *names: str) -> list:
        """What `load_rows` gives for each name, in one process (its imports take seconds)."""
        done = subprocess.run([sys.executable, "-c", READ_HUB_ROWS, *names], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return [json.loads(line) for line in done.stdout.splitlines()[-len(names) :]]

    names = ["someone/chat", "someone/splits", "someone/splits:test", "someone/splits:dev", "someone/missing",
             "someone/chat:test"]  # fmt: skip
    with hub_serving({"datasets/someone/chat": repo, "datasets/someone/splits": splits}) as (endpoint, _):
        online = reaching(endpoint, tmp_path / "hf_home")
        rows, several, test_split, no_split, missing, named_split = read(online, *names)
    assert named_split == {"error": "InputError", "message": "the Hub dataset someone/chat has the splits train, not "
                                                             "'test': give one, such as someone/chat:train"}  # fmt: skip
    assert several == {"error": "InputError", "message": "the Hub dataset someone/splits has the splits train, test: "
                                                         "give one, such as someone/splits:train"}  # fmt: skip
    assert len(test_split) == 2 and [r["_row_id"] for r in test_split] == ["test.jsonl:1", "test.jsonl:2"]
    assert no_split["message"].startswith("the Hub dataset someone/splits has the splits train, test, not 'dev'")
    assert missing == {"error": "FileNotFoundError", "message": "no data at someone/missing: no such file or folder "
                       "here, and no dataset someone/missing on the Hub (a private or gated one needs `hf auth login`)"}  # fmt: skip
    assert [r["_row_id"] for r in rows] == ["rows.jsonl:1", "rows.jsonl:2"]
    encoded = ConversationDataset(rows, processor)
    assert [e["input_ids"].tolist() for e in encoded] == [e["input_ids"].tolist() for e in expected]
    assert np.array_equal(encoded[0]["pixel_values"], expected[0]["pixel_values"])
    assert np.array_equal(encoded[0]["input_features"], expected[0]["input_features"])
    with pytest.raises(FileNotFoundError, match=r"^no data at runs/chat\.\.jsonl$"):  # no repo id either
        load_rows("runs/chat..jsonl")
    offline = read({**online, "HF_HUB_OFFLINE": "1"}, "someone/chat", "someone/other")  # the cache alone
    assert offline[0] == rows
    assert offline[1]["message"] == (
        "no data at someone/other: no such file or folder here, and the Hub dataset someone/other is neither "
        "reachable (offline?) nor in the Hub cache"
    )


def test_a_folder_whose_file_names_hold_splits_is_read_one_split_at_a_time(media_folder):
    """A folder is read as `datasets` reads one: splits in its file names (`train.jsonl`, `test.jsonl`; a split of any
    name as `push_to_hub` writes it) are for different uses, so one is named, `folder:split`. Found: every file was
    read, so `--data data/chat/` trained on the test split beside the train split."""
    import datasets

    row = {"conversations": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Hai."}]}
    folder = media_folder / "chat"
    (folder / "media").mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    (folder / "media" / "test_tone.wav").write_bytes((media_folder / "beep.wav").read_bytes())  # media: no split
    with pytest.raises(InputError, match=r"chat has the splits train, test: give one, such as .*/chat:train$"):
        load_rows(folder)
    assert [r["_row_id"] for r in load_rows(f"{folder}:test")] == ["test.jsonl:1", "test.jsonl:2"]
    assert [r["_row_id"] for r in load_rows(f"{folder}:train", streaming=True)] == ["train.jsonl:1"]
    with pytest.raises(InputError, match=r"has the splits train, test, not 'dev'"):
        load_rows(f"{folder}:dev")
    with pytest.raises(InputError, match=r"train.jsonl is a file: it has no splits to name"):
        load_rows(f"{folder / 'train.jsonl'}:train")
    # One split among other files is no choice to make: every file, as before.
    (folder / "test.jsonl").rename(folder / "more_rows.jsonl")
    assert [r["_row_id"] for r in load_rows(folder)] == ["more_rows.jsonl:1", "more_rows.jsonl:2", "train.jsonl:1"]
    # `push_to_hub`'s layout names splits of any name; a saved dataset goes with its Arrow files' split.
    pushed = media_folder / "pushed"
    datasets.Dataset.from_list([row]).to_parquet(str(pushed / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list([row, row]).to_parquet(str(pushed / "data" / "heldout-00000-of-00001.parquet"))
    with pytest.raises(InputError, match=r"pushed has the splits heldout, train: give one, such as .*pushed:train$"):
        load_rows(pushed)
    assert len(load_rows(f"{pushed}:heldout")) == 2
    datasets.Dataset.from_list([row] * 3).save_to_disk(str(media_folder / "saved" / "test"))
    (media_folder / "saved" / "train.jsonl").write_text(json.dumps(row) + "\n")
    assert [r["_row_id"] for r in load_rows(f"{media_folder / 'saved'}:test")] == ["test:1", "test:2", "test:3"]
