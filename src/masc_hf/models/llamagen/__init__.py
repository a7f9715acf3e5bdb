"""LlamaGen (class-conditional) on the transformers stack: configuration, model, checkpoint conversion."""

from .configuration_llamagen import LLAMAGEN_PRESETS, LlamaGenConfig
from .modeling_llamagen import (
    LlamaGenDecoderLayer,
    LlamaGenForImageGeneration,
    LlamaGenOutput,
    LlamaGenPreTrainedModel,
    default_generation_config,
)

__all__ = [
    "LLAMAGEN_PRESETS",
    "LlamaGenConfig",
    "LlamaGenDecoderLayer",
    "LlamaGenForImageGeneration",
    "LlamaGenOutput",
    "LlamaGenPreTrainedModel",
    "default_generation_config",
]
