"""``python -m kuberl.operator [--namespace NS ...] [--metrics-port N]``: same as ``kuberl operator``."""

import sys

from kuberl.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["operator", *sys.argv[1:]]))
