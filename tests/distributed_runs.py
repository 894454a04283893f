"""Run by tests/test_distributed.py under torchrun: several `pyganx` command lines,
separated by `--then`, one after another in the same processes (each joins and leaves
the process group), to spare the tests a torchrun start per command."""
from __future__ import annotations

import sys

from pyganx.cli import main


def commands(argv: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for a in argv:
        if a == "--then":
            out.append([])
        else:
            out[-1].append(a)
    return [c for c in out if c]


if __name__ == "__main__":
    for cmd in commands(sys.argv[1:]):
        rc = main(cmd)
        if rc:
            sys.exit(rc)
