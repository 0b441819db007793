"""transformers' common processor suite (`ProcessorTesterMixin`) run against `MMMModalProcessor`.

The mixin comes from the source distribution of the installed transformers (tests/transformers_suites.py); the
components are this package's tiny ones: SigLIP's image processor at 32 px (16 slots of 8 px patches), Whisper's
feature extractor with its (published) 30 s windows, and the real Mistral tokenizer. Each test skipped here is listed, with why, in
docs/testing.md.
"""

import tempfile
import unittest
from pathlib import Path
from unittest.mock import patch

from transformers import AutoTokenizer, SiglipImageProcessorPil, WhisperFeatureExtractor

from mmmmodal_hf import MMMModalProcessor
from mmmmodal_hf.offline_tokenizer import mistral_tokenizer_folder

import transformers_suites
from tiny_parts import AUDIO_CONV_KERNEL, AUDIO_CONV_STRIDE, IMAGE_SIZE, PATCH_SIZE

processing_common = transformers_suites.load("test_processing_common")
_to_dict = MMMModalProcessor.to_dict


def _to_dict_without_auto_map(processor) -> dict:
    return {key: value for key, value in _to_dict(processor).items() if key != "auto_map"}


class MMMModalProcessorSuiteTest(processing_common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = MMMModalProcessor

    @classmethod
    def _setup_tokenizer(cls):
        folder = mistral_tokenizer_folder(Path(tempfile.mkdtemp()) / "tokenizer")
        return AutoTokenizer.from_pretrained(folder)

    @classmethod
    def _setup_image_processor(cls):
        return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})

    @classmethod
    def _setup_feature_extractor(cls):
        return WhisperFeatureExtractor(feature_size=80)  # the published 30 s window: a clip is one row

    # These two give videos only to a processor with a `video_processor`; MMMModal's processor decodes its videos
    # itself (`media_mmmmodal.load_video`), so their text holds no `<video>` (tests/test_video.py mixes all three).
    def test_processor_with_multiple_inputs(self):
        with patch.object(type(self), "video_token", ""):
            super().test_processor_with_multiple_inputs()

    def test_replacement_offsets(self):
        with patch.object(type(self), "video_token", ""):
            super().test_replacement_offsets()

    @staticmethod
    def prepare_processor_dict():
        return {
            "patch_size": PATCH_SIZE,
            "audio_conv_kernel": AUDIO_CONV_KERNEL,
            "audio_conv_stride": AUDIO_CONV_STRIDE,
        }

    # transformers' `custom_object_save` sets `auto_map` on a remote-code processor as it saves it (so its `to_dict`
    # changes), and `from_pretrained` never sets it: the round trips compare everything else.
    def test_processor_from_and_save_pretrained(self):
        with patch.object(MMMModalProcessor, "to_dict", _to_dict_without_auto_map):
            super().test_processor_from_and_save_pretrained()

    def test_processor_from_and_save_pretrained_as_nested_dict(self):
        with patch.object(MMMModalProcessor, "to_dict", _to_dict_without_auto_map):
            super().test_processor_from_and_save_pretrained_as_nested_dict()
