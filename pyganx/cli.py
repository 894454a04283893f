"""The `pyganx` command: `info`, `plugins` and `bench` so far; training, export and
serving subcommands are added by their issues."""
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


def _plugins(_args) -> int:
    from . import registry

    rows = []
    for e in registry.entries():
        err = e.error
        if err is None:
            cls = e.load()
            doc = (cls.__doc__ or "").strip().splitlines()
            rows.append((e.name, cls.data_kind, e.distribution, doc[0] if doc else ""))
        else:
            rows.append((e.name, "-", e.distribution, f"error: {err}"))
    if not rows:
        print(f"no GAN variants installed (entry-point group {registry.GROUP!r})")
        return 0
    header = ("name", "data", "distribution", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _data(args) -> int:
    from .data import demo

    if args.data_command == "export":
        try:
            root = demo.export(args.name, args.folder)
        except (ValueError, RuntimeError, OSError) as e:
            print(f"pyganx data export: {e}", file=sys.stderr)
            return 1
        counts = {d.name: sum(1 for _ in d.rglob("*.png")) for d in sorted(root.iterdir()) if d.is_dir()}
        print(f"wrote {args.name} to {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pyganx", description="pyganx: image GANs for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build information, torch version, devices")
    sub.add_parser("plugins", help="the installed GAN variants (entry points pyganx.gans)")
    data = sub.add_parser("data", help="bundled demo data: `pyganx data export NAME DIR`")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    exp = data_sub.add_parser("export", help="write a bundled set as image folders",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("name", choices=["digits", "photos"], help="which set")
    exp.add_argument("folder", help="where to write trainA/ trainB/ testA/ testB/ (...)")
    sub.add_parser("bench", help="benchmarks: `pyganx bench ops [--quick] [--device D]`", add_help=False)
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "data":
        return _data(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
