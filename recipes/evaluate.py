"""FID, IS, Precision and Recall of samples against a reference batch, with torch-fidelity (same as
`masc-hf evaluate`):

    python recipes/evaluate.py --samples samples/gpt-b-masc.npz --reference VIRTUAL_imagenet256_labeled.npz \
        --inception-weights weights-inception-2015-12-05-6726825d.pth --expected-count 50000 --out metrics.json

``--samples``: a folder of PNGs or an ADM ``.npz``; ``--reference``: an ADM reference batch (FID from
its ``mu``/``sigma``, precision/recall from its images), a statistics ``.npz`` or a PNG folder.
``--metrics fid,is,prc`` (default; also ``kid``). Prints a table; ``--out`` writes JSON atomically.
Thin wrapper over ``masc_hf.evaluation.calculate_metrics``.
"""

import sys

from masc_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
