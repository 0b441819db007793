"""The demo's own remote-code module (`modeling_mmmmodal_demo.py`): imported here, written into the demo's folders.

The module is written as a sibling of the Hub modules, as it sits in a saved folder. Here it is
imported under the package (`mmmmodal_hf.modeling_mmmmodal_demo`), so its `from .modeling_mmmmodal
import ...` finds the package's own Hub modules, and its classes are registered with the Auto classes
for this process. `write_demo_code` puts it, and the Hub modules it imports, beside a saved model.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
)

DEMO_MODULE = Path(__file__).with_name("modeling_mmmmodal_demo.py")
HUB_MODULES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py")  # the processor saves its own


def _import_demo_module():
    name = "mmmmodal_hf.modeling_mmmmodal_demo"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DEMO_MODULE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_demo = _import_demo_module()
MMMModalDemoConfig = _demo.MMMModalDemoConfig
MMMModalDemoForConditionalGeneration = _demo.MMMModalDemoForConditionalGeneration
# Saved by `write_demo_code`, not by transformers: its copy would look for the Hub modules beside this file.
MMMModalDemoConfig._auto_class = MMMModalDemoForConditionalGeneration._auto_class = None

AutoConfig.register("mmmmodal_demo", MMMModalDemoConfig, exist_ok=True)
for _auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM):
    _auto.register(MMMModalDemoConfig, MMMModalDemoForConditionalGeneration, exist_ok=True)


def write_demo_code(folder: str | Path) -> None:
    """Put the demo's module and the Hub modules it imports beside a saved demo model (its `auto_map` names them)."""
    package = Path(__file__).resolve().parents[1]
    shutil.copyfile(DEMO_MODULE, Path(folder) / DEMO_MODULE.name)
    for name in HUB_MODULES:
        shutil.copyfile(package / name, Path(folder) / name)
