"""The transformers side: one AR core (:mod:`masc_hf.models.ar`) and the models built from it
(:mod:`masc_hf.models.llamagen`).

Importing this package registers ``LlamaGenConfig`` (model_type ``"masc_llamagen"``) and
``LlamaGenForImageGeneration`` with ``AutoConfig`` / ``AutoModel``, so a converted directory loads with
``AutoModel.from_pretrained(path)`` and no ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from .llamagen import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenOutput, LlamaGenPreTrainedModel
from . import refiner  # noqa: F401  (registers MASCRefinerConfig / MASCRefiner with the Auto classes)

AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
AutoModel.register(LlamaGenConfig, LlamaGenForImageGeneration, exist_ok=True)

__all__ = [
    "LLAMAGEN_PRESETS",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenOutput",
    "LlamaGenPreTrainedModel",
]
