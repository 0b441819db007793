"""Long audio: consecutive windows inside one span, padding slots trimmed by the documented rule."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, SiglipImageProcessorPil, WhisperConfig, WhisperFeatureExtractor

from mmmmodal_hf import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
from mmmmodal_hf.configuration_mmmmodal import num_real_audio_slots

from tiny_parts import AUDIO_SLOTS_PER_WINDOW, random_clip, tiny_config, tiny_vision_config


def audio_slot_count(processor, inputs) -> int:
    return int((inputs["input_ids"] == processor.audio_token_id).sum())


@pytest.mark.parametrize(
    "seconds, expected",
    [
        # 1 s windows of 100 mel frames -> 50 encoder frames -> 16 slots (kernel 4, stride 3).
        (1.0, 16),  # a full window keeps every slot
        (0.6, 10),  # 60 mel -> 30 encoder frames; slots start at 0, 3, ..., 27: ceil(30 / 3) = 10
        (0.05, 1),  # 5 mel -> 3 encoder frames -> 1 slot
        (1 / 16000, 1),  # one sample still gets one slot
        (2.5, 16 + 16 + 9),  # two full windows, then 0.5 s: 50 mel -> 25 encoder frames -> 9
    ],
)
def test_padding_slots_are_trimmed_by_the_rule(processor, seconds, expected):
    clip = np.full(max(1, round(seconds * 16000)), 0.1, dtype=np.float32)
    inputs = processor(text="<audio>", audio=clip, return_tensors="pt")
    assert audio_slot_count(processor, inputs) == expected
    # The rule: slot j (reading encoder frames from j * stride) is kept iff j * stride < real encoder frames.
    for real_mel in inputs["input_features_mask"].sum(-1).tolist():
        kept = num_real_audio_slots(real_mel, AUDIO_SLOTS_PER_WINDOW, 3)
        real_encoder_frames = (real_mel - 1) // 2 + 1
        assert (kept - 1) * 3 < real_encoder_frames
        assert kept == AUDIO_SLOTS_PER_WINDOW or kept * 3 >= real_encoder_frames


def test_without_trimming_every_window_keeps_all_slots(processor):
    processor.trim_audio_padding = False
    inputs = processor(text="<audio> <audio>", audio=[random_clip(0, seconds=0.3), random_clip(1, seconds=1.5)])
    assert audio_slot_count(processor, {"input_ids": np.asarray(inputs["input_ids"])}) == 3 * AUDIO_SLOTS_PER_WINDOW


def test_trimmed_features_are_each_windows_leading_slots(session_processor):
    """The model keeps exactly the slots the processor wrote: each window's first `kept` projector outputs."""
    torch.manual_seed(0)
    trimming = MMMModalForConditionalGeneration(tiny_config(session_processor)).eval()
    full = MMMModalForConditionalGeneration(tiny_config(session_processor, trim_audio_padding=False)).eval()
    full.load_state_dict(trimming.state_dict())
    inputs = session_processor(
        text="<audio> and <audio>",
        audio=[random_clip(0, seconds=1.7), random_clip(1, seconds=0.4)],
        return_tensors="pt",
    )
    with torch.no_grad():
        trimmed = trimming(**inputs).audio_hidden_states
        every = full.get_audio_features(inputs["input_features"]).pooler_output.reshape(3, AUDIO_SLOTS_PER_WINDOW, -1)
    kept = [16, 12, 7]  # 1.7 s -> a full window + 70 mel frames (35 encoder -> 12); 0.4 s -> 40 mel (20 -> 7)
    assert trimmed.shape[0] == sum(kept) == audio_slot_count(session_processor, inputs)
    expected = torch.cat([every[window, :count] for window, count in enumerate(kept)])
    torch.testing.assert_close(trimmed, expected)


def test_max_audio_seconds_limits_each_sample(processor):
    processor.max_audio_seconds = 2.0
    processor(text=["<audio> <audio>", "<audio>"], audio=[[random_clip(0), random_clip(1)], [random_clip(2, 1.9)]])
    with pytest.raises(ValueError, match=r"Sample 2: its audio lasts 2\.5 s up to and including audio 2"):
        processor(
            text=["<audio>", "<audio> <audio>"],
            audio=[[random_clip(0)], [random_clip(1, seconds=1.5), random_clip(2, seconds=1.0)]],
        )


def test_two_minute_clip_with_published_whisper_windows_generates(session_processor):
    """30 s windows, 1500 encoder frames and the published Conv1d(kernel 40, stride 3): 487 slots per window."""
    extractor = WhisperFeatureExtractor(feature_size=80)  # 30 s windows, as Whisper
    processor = MMMModalProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        feature_extractor=extractor,
        tokenizer=session_processor.tokenizer,
        patch_size=8,
        audio_conv_kernel=40,
        audio_conv_stride=3,
    )
    config = MMMModalConfig(
        vision_config=tiny_vision_config(),
        audio_config=WhisperConfig(
            d_model=16,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=32,
            num_mel_bins=80,
            max_source_positions=1500,
            vocab_size=64,
        ),
        text_config=LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(processor.tokenizer),
            max_position_embeddings=4096,
        ),
        audio_conv_kernel=40,
        audio_conv_stride=3,
        **processor.special_token_ids,
    )
    torch.manual_seed(0)
    model = MMMModalForConditionalGeneration(config).eval()
    clip = random_clip(0, seconds=127.0)  # 4 full windows + 7 s
    inputs = processor(text="[INST] <audio> Summarise. [/INST]", audio=clip, return_tensors="pt")
    assert inputs["input_features"].shape == (5, 80, 3000)
    # 7 s = 700 mel frames -> 350 encoder frames -> ceil(350 / 3) = 117 slots in the last window.
    assert audio_slot_count(processor, inputs) == 4 * 487 + 117
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 3)
