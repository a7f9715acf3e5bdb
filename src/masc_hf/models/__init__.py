"""The transformers side: one AR core (:mod:`masc_hf.models.ar`) and the models built from it
(:mod:`masc_hf.models.llamagen`, :mod:`masc_hf.models.iar2`).

Importing this package registers ``LlamaGenConfig`` (model_type ``"masc_llamagen"``),
``IAR2Config`` (``"masc_iar2"``) and their models with ``AutoConfig`` / ``AutoModel``, so a converted directory loads with
``AutoModel.from_pretrained(path)`` and no ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from .iar2 import IAR2_PRESETS, IAR2Config, IAR2ForImageGeneration, IAR2Output
from .llamagen import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenOutput, LlamaGenPreTrainedModel
from . import refiner  # noqa: F401  (registers MASCRefinerConfig / MASCRefiner with the Auto classes)

AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
AutoModel.register(LlamaGenConfig, LlamaGenForImageGeneration, exist_ok=True)
AutoConfig.register(IAR2Config.model_type, IAR2Config, exist_ok=True)
AutoModel.register(IAR2Config, IAR2ForImageGeneration, exist_ok=True)

__all__ = [
    "IAR2Config",
    "IAR2ForImageGeneration",
    "IAR2Output",
    "IAR2_PRESETS",
    "LLAMAGEN_PRESETS",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenOutput",
    "LlamaGenPreTrainedModel",
]
