"""Entry of `pyganx bench SUITE` and `python -m pyganx.bench SUITE`."""
from __future__ import annotations

import sys

SUITES = ("ops", "nets", "onnx", "serve", "memory", "dist", "profile", "steps")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    suite = argv.pop(0) if argv and not argv[0].startswith("-") else "ops"
    if suite in ("-h", "--help") or suite not in SUITES:
        print(f"usage: pyganx bench [{'|'.join(SUITES)}] [options]; `pyganx bench ops --help` for options",
              file=sys.stderr)
        return 0 if suite in ("-h", "--help") else 2
    if suite == "nets":
        from . import nets
        return nets.main(argv)
    if suite == "onnx":
        from . import onnx
        return onnx.main(argv)
    if suite == "serve":
        from . import serve
        return serve.main(argv)
    if suite == "memory":
        from . import memory
        return memory.main(argv)
    if suite == "dist":
        from . import dist
        return dist.main(argv)
    if suite == "profile":
        from . import profile
        return profile.main(argv)
    if suite == "steps":
        from . import steps
        return steps.main(argv)
    from . import ops
    return ops.main(argv)
