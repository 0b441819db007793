"""Serving MMMModal on vLLM: a plugin on vLLM's Transformers modeling backend, and `mmmmodal serve`.

vLLM loads `register_vllm_model` in each of its processes (the `vllm.general_plugins` entry point), so
an unmodified vLLM serves a saved or converted MMMModal folder. Nothing here imports vLLM until vLLM
itself calls in.
"""

ARCHITECTURE = "MMMModalForConditionalGeneration"


def register_vllm_model() -> None:
    """Tell vLLM which class serves `MMMModalForConditionalGeneration` folders, and offer the media connector
    that decodes as the processor does (`VLLM_MEDIA_CONNECTOR=mmmmodal`). Safe to call again."""
    from vllm import ModelRegistry

    from . import vllm_media  # noqa: F401  registers the "mmmmodal" media connector

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "mmmmodal_hf.serving.vllm_model:MMMModalForVLLM")


__all__ = ["ARCHITECTURE", "register_vllm_model"]
