"""The `pyganx` command: `info`, `plugins`, `train`, `sample`, `eval`, `export`,
`translate`, `serve`, `data` and `bench`.

:data:`COMMANDS` is the table of sub-commands: each one's help, its options (a
dataclass, whose flags pyganx.flags generates and whose ``check()`` holds the rules
about them, or a function adding its arguments) and its handler. `train` is parsed per
variant (the engine's TrainOptions and the plugin's Config); `translate` and `serve`
are pyganx-runtime's own commands (the same arguments and code as
`pyganx-runtime translate|serve`); `bench` has its own entry. Every command reports
errors as pyganx_runtime.cli.run_command does: a PyganxError or OSError as one line,
anything else as one line naming its type (and whether memory ran out), `--debug` for
the traceback."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyganx_runtime import metadata as keys
from pyganx_runtime.cli import Parser, add_runtime_commands, run_command, runtime_command
from pyganx_runtime.files import atomic_write_text

from .engine.sample import SampleOptions, sample_run
from .errors import UsageError
from .export.options import ExportOptions
from .flags import add_dataclass_arguments, dataclass_from_arguments
from .metrics.options import EvalOptions


def _info(_args) -> int:
    import torch

    import pyganx

    info = pyganx.build_info()
    info["cuda_available"] = torch.cuda.is_available()
    devices = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    info["devices"] = devices
    from .engine.device import pick_device
    info["default_device"] = str(pick_device())
    # Which implementation each layer runs on each device, and why (pyganx.tuning).
    from . import tuning
    kinds = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info["implementation"] = {kind: tuning.describe(kind) for kind in kinds}
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


def _data_arguments(p: argparse.ArgumentParser) -> None:
    data_sub = p.add_subparsers(dest="data_command", required=True)
    exp = data_sub.add_parser("export", help="write a bundled set as image folders",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("name", choices=["digits", "photos"], help="which set")
    exp.add_argument("folder", help="where to write trainA/ trainB/ testA/ testB/ (...)")


def _data(args) -> int:
    from .data import demo

    if args.data_command == "export":
        root = demo.export(args.name, args.folder)
        counts = {d.name: sum(1 for _ in d.rglob("*.png")) for d in sorted(root.iterdir()) if d.is_dir()}
        print(f"wrote {args.name} to {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    return 2


def _sample(opts: SampleOptions) -> int:
    folder, counts = sample_run(opts)
    print(f"wrote {folder / 'grid.png'} and " + ", ".join(f"{v} {k!r}" for k, v in counts.items())
          + f" images under {folder}")
    return 0


def _eval(opts: EvalOptions) -> int:
    from .metrics.evaluate import eval_file, evaluate_checkpoints, evaluate_run, format_result
    from .metrics.fid import InceptionScorer, evaluate_folders, format_inception, format_setup
    from .metrics.inception import WEIGHTS_ENV

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    wants_inception = bool(opts.folders or opts.inception_weights or os.environ.get(WEIGHTS_ENV))
    inception = (InceptionScorer.load(opts.inception_weights, opts.device, resize=opts.inception_resize,
                                      batch_size=opts.batch_size, kid_subsets=opts.kid_subsets,
                                      kid_subset_size=opts.kid_subset_size) if wants_inception else None)
    if opts.folders:
        result = evaluate_folders(opts.real, opts.fake, inception, opts.skip_bad_images)
        print(f"{opts.fake} against {opts.real}: {format_inception(result)}\n  {format_setup(result['inception'])}")
        if opts.out:
            atomic_write_text(Path(opts.out), json.dumps(result, indent=2) + "\n")
            print(f"figures written to {opts.out}")
        return 0
    if opts.all_checkpoints:
        evaluate_checkpoints(opts.run, device=opts.device, log=log, inception=inception)
        print(f"figures written to {Path(opts.run) / 'eval-checkpoints.json'} and eval-checkpoints.png")
        return 0
    result = evaluate_run(opts.run, device=opts.device, log=log, model=opts.model, inception=inception)
    print(format_result(result))
    print(f"figures written to {eval_file(result['run'], opts.model)}")
    return 0


def _export(opts: ExportOptions) -> int:
    from .export import export_generator
    res = export_generator(opts)
    m = res.metadata
    inputs, domains = json.loads(m[keys.INPUTS]), json.loads(m[keys.DOMAINS])
    if inputs == ["image"]:
        what = f"{' -> '.join(domains)}, {m[keys.IO_LAYOUT]}, " + \
            (f"static {res.checked_shapes[0]}" if opts.static else "dynamic N, H, W") + \
            f" (H, W multiples of {m[keys.SIZE_MULTIPLE]})"
    else:
        what = f"inputs {', '.join(inputs)}" + (f"; {'classes' if 'label' in inputs else 'domains'} "
                                                f"{', '.join(domains)}" if domains else "") + \
            ("" if "z" in inputs else f"; H, W multiples of {m[keys.SIZE_MULTIPLE]}")
    print(f"wrote {res.path} ({res.path.stat().st_size / 2**20:.1f} MiB): {m[keys.PLUGIN]} "
          f"{m[keys.GENERATOR]}, {what}; onnxruntime is within {res.max_abs_error:.1e} of the "
          f"{res.reference} PyTorch run" + (f" (float32 PyTorch: {res.float32_error:.1e})"
                                            if res.float32_error is not None else ""))
    q = res.quality
    if q:
        print(f"int8 against float32 on {int(q['images'])} calibration images: PSNR {q['psnr_db']:.1f} dB, "
              f"SSIM {q['ssim']:.4f}, largest difference {q['max_abs_diff']:.3f} (outputs in [-1, 1])")
    if res.triton is not None:
        print(f"wrote the Triton model {res.triton} (config.pbtxt, 1/model.onnx); serve it with "
              f"`tritonserver --model-repository={opts.triton_repository}`")
    return 0


def _train_parser(variant: str, cls) -> Parser:
    """``pyganx train VARIANT``'s parser: the engine's flags (engine.options.TrainOptions)
    and the plugin's (its Config), both generated from their dataclasses."""
    from .engine.options import add_train_arguments

    ap = Parser(prog=f"pyganx train {variant}", description=(cls.__doc__ or "").strip().splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(ap)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    try:
        add_dataclass_arguments(ap, cls.Config, f"{cls.Config.__name__} (plugin options)")
    except (TypeError, argparse.ArgumentError) as e:
        raise UsageError(f"plugin {variant!r}: {e}") from None
    return ap


def _train(argv: list[str]) -> int:
    from . import registry

    variant = argv[0] if argv and not argv[0].startswith("-") else None
    if variant is None:
        names = ", ".join(registry.names()) or "none installed"
        print(f"usage: pyganx train VARIANT [options]; VARIANT is one of: {names}\n"
              f"`pyganx train VARIANT --help` lists a variant's options", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run_command("pyganx train", lambda _: _train_variant(variant, argv[1:]),
                       argparse.Namespace(debug="--debug" in argv))


def _train_variant(variant: str, argv: list[str]) -> int:
    from . import registry
    from .engine import Trainer
    from .engine.options import options_from_arguments

    cls = registry.get(variant)
    ap = _train_parser(variant, cls)
    args = ap.parse_args(argv)
    opts = options_from_arguments(args)
    missing = opts.missing()        # a usage error of the command line (exit status 2)
    if missing:
        ap.error(missing)
    result = Trainer(variant, cls, dataclass_from_arguments(cls.Config, args), opts).fit()
    if os.environ.get("RANK", "0") != "0":     # torchrun: rank 0 speaks for the run
        return 130 if result.get("interrupted") else 0
    if result.get("interrupted"):
        ck = result.get("checkpoint")
        print(f"pyganx train: interrupted at step {result['steps']}; "
              + (f"checkpoint: {ck}; continue with --resume" if ck else "no step to checkpoint"),
              file=sys.stderr)
        return 130
    print(f"trained {variant} for {result['steps']} steps in {result['seconds']:.1f} s; "
          f"run directory: {args.out}")
    return 0


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command of ``pyganx``."""
    help: str
    #: an options dataclass (its flags generated by pyganx.flags), a function adding the
    #: command's arguments to its parser, or None
    arguments: type | Callable[[argparse.ArgumentParser], None] | None
    #: gets the options built from the arguments and checked (their ``check()``), or the
    #: parsed arguments; returns the exit status
    handler: Callable[[Any], int]


COMMANDS: dict[str, Command] = {
    "info": Command("build information, torch version, devices", None, _info),
    "plugins": Command("the installed GAN variants (entry points pyganx.gans)", None, _plugins),
    "data": Command("bundled demo data: `pyganx data export NAME DIR`", _data_arguments, _data),
    "sample": Command("a trained run's generators on its test images", SampleOptions, _sample),
    "eval": Command("quality figures of a trained run (writes RUN_DIR/eval.json), or FID/KID of two image folders",
                    EvalOptions, _eval),
    "export": Command("a trained generator as an ONNX model", ExportOptions, _export),
}


def _parser() -> Parser:
    """``pyganx``'s parser: the commands of :data:`COMMANDS`, then translate, serve, bench and
    train (whose arguments their own entries parse)."""
    parser = Parser(prog="pyganx", description="pyganx: image GANs for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if dataclasses.is_dataclass(cmd.arguments):
            add_dataclass_arguments(p, cmd.arguments, f"{name} options")
        elif cmd.arguments is not None:
            cmd.arguments(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_runtime_commands(sub)
    sub.add_parser("bench", help="benchmarks: `pyganx bench ops [--quick] [--device D]`", add_help=False)
    sub.add_parser("train", help="train a GAN variant: `pyganx train VARIANT --help`", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    name = f"pyganx {args.command}" + (f" {args.data_command}" if args.command == "data" else "")
    if args.command in ("translate", "serve"):
        return runtime_command(args, name)
    cmd = COMMANDS[args.command]
    return run_command(name, lambda a: cmd.handler(_options(cmd, a)), args)


def _options(cmd: Command, args: argparse.Namespace) -> Any:
    """What ``cmd``'s handler gets: its options dataclass built from ``args`` and checked
    (a UsageError, reported as one line, for flags that do not combine), or ``args``."""
    if not dataclasses.is_dataclass(cmd.arguments):
        return args
    opts = dataclass_from_arguments(cmd.arguments, args)
    opts.check()
    return opts


if __name__ == "__main__":
    sys.exit(main())
