"""The Fashion-MNIST quickstart (same as `masc-hf quickstart`): python recipes/quickstart.py [--out DIR] [--fast]"""

import sys

from masc_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
