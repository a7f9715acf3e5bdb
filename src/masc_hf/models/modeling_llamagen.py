"""Moved to :mod:`masc_hf.models.llamagen.modeling_llamagen`; this path stays for one release (saved pipelines and
user code import it) and is that module itself."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("masc_hf.models.llamagen.modeling_llamagen")
