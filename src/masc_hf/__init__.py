"""masc-hf: MASC cluster maps, LlamaGen models, IAR2 tokenizers and pipelines on the Hugging Face stack.

The top-level namespace is lazy: ``import masc_hf`` costs almost nothing, and each name is
imported from its layer on first use (``masc_hf.build_cluster_map`` pulls in numpy and scipy
only; the model classes pull in torch and transformers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING

from ._lazy import attach
from ._version import __version__

# public name -> module that defines it
_LAZY = {
    "build_cluster_map": "masc_hf.clustering",
    "MASCClusterMap": "masc_hf.clustering",
    "cluster_quality": "masc_hf.clustering",
    "codebook_fingerprint": "masc_hf.clustering",
    "CLUSTER_METHODS": "masc_hf.clustering",
    "MASCError": "masc_hf.errors",
    "ClusterMapError": "masc_hf.errors",
    "ClusterMapMismatchError": "masc_hf.errors",
    "CodebookError": "masc_hf.errors",
    "DualCodebookVQModel": "masc_hf.vq",
    "IAR2Config": "masc_hf.models",
    "IAR2ForImageGeneration": "masc_hf.models",
    "IAR2Pipeline": "masc_hf.pipelines",
    "LlamaGenConfig": "masc_hf.models",
    "LlamaGenForImageGeneration": "masc_hf.models",
    "MASCPipeline": "masc_hf.pipelines",
}


__getattr__, __dir__, _names = attach(__name__, _LAZY)
__all__ = ["__version__", *_names]


# Importing masc_hf.models registers our Auto* classes; the hook below runs this once transformers' Auto classes
# are imported and transformers' modeling_utils is complete (importing our models while it is half-initialised,
# which happens when a library imports the Auto classes from inside modeling_utils, would build our layers on a
# half-imported transformers).
def _register_auto_classes() -> None:
    try:
        importlib.import_module("masc_hf.models")
    except ImportError as err:  # e.g. transformers without torch: nothing to register
        logging.getLogger(__name__).debug("masc-hf Auto classes not registered: %s", err)


_AUTO_MODULE = "transformers.models.auto"
_MODELING_MODULE = "transformers.modeling_utils"


def _ready() -> bool:
    """The Auto classes are imported, and modeling_utils is either complete or not imported at all."""
    auto, modeling = sys.modules.get(_AUTO_MODULE), sys.modules.get(_MODELING_MODULE)
    return auto is not None and hasattr(auto, "AutoModel") and (modeling is None or hasattr(modeling, "PreTrainedModel"))


class _RegisterAfterTransformersImport(importlib.abc.MetaPathFinder):
    """Wraps the loading of the two modules above; registers when the last of them has finished."""

    def __init__(self) -> None:
        self.searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in (_AUTO_MODULE, _MODELING_MODULE) or self.searching:
            return None
        self.searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.searching = False
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            loader.exec_module = exec_module
            if _ready() and self in sys.meta_path:
                sys.meta_path.remove(self)
                _register_auto_classes()

        loader.exec_module = exec_then_register
        return spec


# A hook, not an import: AutoModel.from_pretrained after a bare ``import masc_hf`` needs our model registered, yet importing torch here would make cluster-map users pay for it.
if _ready():
    _register_auto_classes()
elif not any(isinstance(f, _RegisterAfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())


if TYPE_CHECKING:  # pragma: no cover
    from .clustering import CLUSTER_METHODS, MASCClusterMap, build_cluster_map, cluster_quality, codebook_fingerprint
    from .errors import ClusterMapError, ClusterMapMismatchError, CodebookError, MASCError
    from .models import IAR2Config, IAR2ForImageGeneration, LlamaGenConfig, LlamaGenForImageGeneration
    from .pipelines import IAR2Pipeline, MASCPipeline
    from .vq import DualCodebookVQModel
