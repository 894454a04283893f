"""The `pyganx` command. This first version has `info` and `bench`; training, export
and serving subcommands are added by their issues."""
from __future__ import annotations

import argparse
import json
import sys


def _info(_args) -> int:
    import torch

    import pyganx

    info = pyganx.build_info()
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pyganx", description="pyganx: image GANs for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build information, torch version, devices")
    sub.add_parser("bench", help="benchmarks: `pyganx bench ops [--quick] [--device D]`", add_help=False)
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
