"""IAR2 (class-conditional, semantic-detail token pairs) on the transformers stack: configuration,
model with its local-context head and adaptive guidance, checkpoint conversion."""

from .configuration_iar2 import IAR2_PRESETS, IAR2Config
from .modeling_iar2 import IAR2DecoderLayer, IAR2ForImageGeneration, IAR2Output, IAR2PreTrainedModel, default_generation_config

__all__ = [
    "IAR2Config",
    "IAR2DecoderLayer",
    "IAR2ForImageGeneration",
    "IAR2Output",
    "IAR2PreTrainedModel",
    "IAR2_PRESETS",
    "default_generation_config",
]
