"""A real tokenizer without a download: the Mistral 7B sentencepiece model that `mistral-common` ships.

The tests, the benchmarks and the demo tokenize with it (32000 pieces; with the four tags, 32004, as in
the released models), since no tokenizer can be fetched from the Hub on the development machines.
"""

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer


def mistral_tokenizer_folder(folder: Path) -> Path | None:
    """Save the sentencepiece model that `mistral-common` ships (32000 pieces) as a loadable tokenizer.

    Returns None when `mistral-common` is not installed.
    """
    try:
        import mistral_common
    except ImportError:
        return None
    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
            }
        )
    )
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)  # tokenizer.json: later loads are fast
    return folder
