"""`python -m imgdedup.scan SOURCE ...`: the same as `imgdedup scan SOURCE ...`."""

from __future__ import annotations

import argparse
import sys

from imgdedup.scan import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="imgdedup scan")
    cli.add_arguments(parser)
    sys.exit(cli.main(parser.parse_args()))
