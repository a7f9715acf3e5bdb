"""The MASC refinement network (hierarchical decoding): configuration and model.

Importing this package registers ``MASCRefinerConfig`` (model_type ``"masc_refiner"``) and ``MASCRefiner``
with ``AutoConfig`` / ``AutoModel``, so a saved refiner loads with ``AutoModel.from_pretrained(path)``.
"""

from transformers import AutoConfig, AutoModel

from .configuration_refiner import MASCRefinerConfig
from .modeling_refiner import MASCRefiner, MASCRefinerOutput, MASCRefinerPreTrainedModel, check_refiner_fits

AutoConfig.register(MASCRefinerConfig.model_type, MASCRefinerConfig, exist_ok=True)
AutoModel.register(MASCRefinerConfig, MASCRefiner, exist_ok=True)

__all__ = ["MASCRefiner", "MASCRefinerConfig", "MASCRefinerOutput", "MASCRefinerPreTrainedModel", "check_refiner_fits"]
