"""Moved to :mod:`masc_hf.vq.convert_llamagen`; this path stays for one release and is that module itself."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("masc_hf.vq.convert_llamagen")
