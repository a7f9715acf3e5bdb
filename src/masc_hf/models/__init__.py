"""LlamaGen on the transformers stack: configuration, model with ``generate``, checkpoint conversion.

Importing this package registers ``LlamaGenConfig`` (model_type ``"masc_llamagen"``) and
``LlamaGenForImageGeneration`` with ``AutoConfig`` / ``AutoModel``, so a converted directory loads with
``AutoModel.from_pretrained(path)`` and no ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from .configuration_llamagen import LLAMAGEN_PRESETS, LlamaGenConfig
from .modeling_llamagen import LlamaGenForImageGeneration, LlamaGenOutput, LlamaGenPreTrainedModel

AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
AutoModel.register(LlamaGenConfig, LlamaGenForImageGeneration, exist_ok=True)

__all__ = [
    "LLAMAGEN_PRESETS",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenOutput",
    "LlamaGenPreTrainedModel",
]
