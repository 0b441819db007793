"""What the training commands need of the installed transformers, checked before they import anything heavy.

The Hub modules and serving work from transformers 5.19 (the version vLLM 0.32 pins); training is tested
from 5.23 (`TrainingArguments.activation_checkpointing`, among others). The check runs before Trainer,
peft or bitsandbytes are imported, so an old transformers gets one line, not their start-up messages.
"""

import sys

TRAINING_NEEDS_TRANSFORMERS = "5.23"


def require_training_transformers(command: str) -> int | None:
    """None where the installed transformers trains; else say so in one line, and the exit status."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version(TRAINING_NEEDS_TRANSFORMERS):
        return None
    print(
        f"{command} needs transformers>={TRAINING_NEEDS_TRANSFORMERS} (installed: {transformers.__version__}, "
        f'as vLLM pins it?): pip install "transformers>={TRAINING_NEEDS_TRANSFORMERS}" in a venv without vLLM.',
        file=sys.stderr,
    )
    return 2


__all__ = ["TRAINING_NEEDS_TRANSFORMERS", "require_training_transformers"]
