"""mmmmodal-hf: MMMModal multimodal chat models (many images, many audio clips, many turns) for transformers.

Importing the package registers the MMMModal classes with transformers' Auto classes, so a local
folder loads without `trust_remote_code`; saved folders carry the same code for the Hub.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

from .configuration_mmmmodal import MMMModalConfig, num_audio_slots, num_image_slots
from .media_mmmmodal import load_audio, load_image
from .modeling_mmmmodal import (
    MMMModalAudioProjector,
    MMMModalForConditionalGeneration,
    MMMModalImageProjector,
    MMMModalModel,
    MMMModalPreTrainedModel,
)
from .processing_mmmmodal import DEFAULT_CHAT_TEMPLATE, MMMModalProcessor
from .session import MMMModalChatSession

__version__ = "0.1.0"

AutoConfig.register("mmmmodal", MMMModalConfig, exist_ok=True)
for _auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM):
    _auto_class.register(MMMModalConfig, MMMModalForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMMModalConfig, MMMModalProcessor, exist_ok=True)

__all__ = [
    "MMMModalConfig",
    "MMMModalModel",
    "MMMModalForConditionalGeneration",
    "MMMModalPreTrainedModel",
    "MMMModalImageProjector",
    "MMMModalAudioProjector",
    "MMMModalProcessor",
    "MMMModalChatSession",
    "DEFAULT_CHAT_TEMPLATE",
    "load_image",
    "load_audio",
    "num_image_slots",
    "num_audio_slots",
]
