"""The `pyganx` command: `info`, `plugins`, `train`, `sample`, `eval`, `export`,
`translate`, `serve`, `data` and `bench`.

`translate` and `serve` are pyganx-runtime's own commands (the same arguments and
code as `pyganx-runtime translate|serve`). Every command reports errors as
pyganx_runtime.cli.run_command does: a PyganxError or OSError as one line, anything
else as one line naming its type (and whether memory ran out), `--debug` for the
traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyganx_runtime import metadata as keys
from pyganx_runtime.cli import Parser, add_runtime_commands, run_command, runtime_command
from pyganx_runtime.files import atomic_write_text

from .errors import UsageError


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


def _data(args) -> int:
    from .data import demo

    if args.data_command == "export":
        root = demo.export(args.name, args.folder)
        counts = {d.name: sum(1 for _ in d.rglob("*.png")) for d in sorted(root.iterdir()) if d.is_dir()}
        print(f"wrote {args.name} to {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    return 2


def _sample(args) -> int:
    from .engine.sample import sample_run

    folder, counts = sample_run(args.run, args.out, args.n, args.device, label=args.label, domain=args.domain)
    print(f"wrote {folder / 'grid.png'} and " + ", ".join(f"{v} {k!r}" for k, v in counts.items())
          + f" images under {folder}")
    return 0


def _eval(args) -> int:
    from .metrics.evaluate import eval_file, evaluate_checkpoints, evaluate_run, format_result
    from .metrics.fid import InceptionScorer, evaluate_folders, format_inception, format_setup
    from .metrics.inception import WEIGHTS_ENV

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    folders = args.real or args.fake
    if folders and (args.run or not (args.real and args.fake)):
        raise UsageError("give RUN_DIR, or --real DIR and --fake DIR (two image folders), not both")
    if not folders and not args.run:
        raise UsageError("give RUN_DIR, or --real DIR --fake DIR")
    wants_inception = bool(folders or args.inception_weights or os.environ.get(WEIGHTS_ENV))
    if args.out and not folders:
        raise UsageError("--out names the JSON file of --real/--fake; a run's figures go to RUN_DIR/eval.json")
    inception = (InceptionScorer.load(args.inception_weights, args.device, resize=args.inception_resize,
                                      batch_size=args.batch_size, kid_subsets=args.kid_subsets,
                                      kid_subset_size=args.kid_subset_size) if wants_inception else None)
    if folders:
        result = evaluate_folders(args.real, args.fake, inception, args.skip_bad_images)
        print(f"{args.fake} against {args.real}: {format_inception(result)}\n  {format_setup(result['inception'])}")
        if args.out:
            atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
            print(f"figures written to {args.out}")
        return 0
    if args.all_checkpoints:
        if args.model:
            raise UsageError("--all-checkpoints evaluates the run's checkpoints, not a --model")
        evaluate_checkpoints(args.run, device=args.device, log=log, inception=inception)
        print(f"figures written to {Path(args.run) / 'eval-checkpoints.json'} and eval-checkpoints.png")
        return 0
    result = evaluate_run(args.run, device=args.device, log=log, model=args.model, inception=inception)
    print(format_result(result))
    print(f"figures written to {eval_file(result['run'], args.model)}")
    return 0


def _export(args) -> int:
    from .export import export_generator
    res = export_generator(args.source, args.out, generator=args.generator, static=args.static,
                           with_preprocessing=args.with_preprocessing,
                           from_format=args.from_format, image_size=args.image_size,
                           int8=args.int8, calibrate=args.calibrate, fp16=args.fp16,
                           winograd=args.winograd,
                           domains=tuple(args.domains.split(",")) if args.domains else None)
    m = res.metadata
    inputs, domains = json.loads(m[keys.INPUTS]), json.loads(m[keys.DOMAINS])
    if inputs == ["image"]:
        what = f"{' -> '.join(domains)}, {m[keys.IO_LAYOUT]}, " + \
            (f"static {res.checked_shapes[0]}" if args.static else "dynamic N, H, W") + \
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
    return 0


def _train_parser(variant: str, cls) -> Parser:
    """``pyganx train VARIANT``'s parser: the engine's flags (engine.options.TrainOptions)
    and the plugin's (its Config), both generated from their dataclasses."""
    from .engine.options import add_train_arguments
    from .plugin import add_config_arguments

    ap = Parser(prog=f"pyganx train {variant}", description=(cls.__doc__ or "").strip().splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(ap)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    try:
        add_config_arguments(ap, cls.Config)
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
    from .plugin import config_from_arguments

    cls = registry.get(variant)
    ap = _train_parser(variant, cls)
    args = ap.parse_args(argv)
    if args.steps is None and args.epochs is None:
        ap.error("give --steps N or --epochs N")
    if not (args.data or args.demo or (args.data_a and args.data_b)):
        ap.error("give --data DIR, --data-a DIR --data-b DIR, or --demo NAME")
    result = Trainer(variant, cls, config_from_arguments(cls.Config, args), options_from_arguments(args)).fit()
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="pyganx", description="pyganx: image GANs for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build information, torch version, devices")
    sub.add_parser("plugins", help="the installed GAN variants (entry points pyganx.gans)")
    data = sub.add_parser("data", help="bundled demo data: `pyganx data export NAME DIR`")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    exp = data_sub.add_parser("export", help="write a bundled set as image folders",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("name", choices=["digits", "photos"], help="which set")
    exp.add_argument("folder", help="where to write trainA/ trainB/ testA/ testB/ (...)")
    smp = sub.add_parser("sample", help="a trained run's generators on its test images",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    smp.add_argument("run", metavar="RUN_DIR", help="run directory (or one checkpoint in it)")
    smp.add_argument("-o", "--out", help="output folder (default: RUN_DIR/generated/step-N)")
    smp.add_argument("--n", type=int, default=8, help="test items to sample")
    smp.add_argument("--label", help="class name or index, for conditional variants")
    smp.add_argument("--domain", help="target domain name, for multi-domain variants")
    smp.add_argument("--device", help="cuda, mps or cpu (default: the first available)")
    smp.add_argument("--debug", action="store_true", help="show tracebacks")
    ev = sub.add_parser("eval", help="quality figures of a trained run (writes RUN_DIR/eval.json), or FID/KID "
                                     "of two image folders", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("run", metavar="RUN_DIR", nargs="?", help="run directory (or one checkpoint in it)")
    ev.add_argument("--real", metavar="DIR", help="with --fake: FID and KID of the images of two folders")
    ev.add_argument("--fake", metavar="DIR", help="the generated images, against --real")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception weights; default: "
                         "$PYGANX_INCEPTION_WEIGHTS): adds FID and KID on its features")
    ev.add_argument("--inception-resize", choices=["pytorch-fid", "clean"], default="pytorch-fid",
                    help="how images reach 299x299: bilinear as pytorch-fid, or PIL bicubic as Clean-FID")
    ev.add_argument("--kid-subsets", type=int, default=100, help="KID on Inception features: random subsets")
    ev.add_argument("--kid-subset-size", type=int, default=1000, help="KID: images per subset")
    ev.add_argument("--batch-size", type=int, default=50, help="images per Inception run")
    ev.add_argument("--skip-bad-images", action="store_true",
                    help="--real/--fake: warn about unreadable images and leave them out")
    ev.add_argument("-o", "--out", metavar="FILE.json", help="--real/--fake: also write the figures here")
    ev.add_argument("--model", metavar="MODEL.onnx",
                    help="judge this model exported from the run instead of its PyTorch generator")
    ev.add_argument("--all-checkpoints", action="store_true",
                    help="evaluate every kept checkpoint: the figures over training (eval-checkpoints.json/.png)")
    ev.add_argument("--device", help="cuda, mps or cpu (default: the first available)")
    ev.add_argument("--debug", action="store_true", help="show tracebacks")
    onx = sub.add_parser("export", help="a trained generator as an ONNX model",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    onx.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="run directory or one checkpoint")
    onx.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    onx.add_argument("--generator", help="an export spec or network name (default: the plugin's first)")
    onx.add_argument("--static", action="store_true", help="fixed 1 x C x S x S input instead of dynamic N, H, W")
    onx.add_argument("--with-preprocessing", action="store_true",
                     help="uint8 NHWC images in and out, any H and W; scaling and padding in the graph")
    onx.add_argument("--fp16", action="store_true",
                     help="half-precision weights and compute (GPU deployment), float32 in/out")
    onx.add_argument("--int8", action="store_true",
                     help="onnxruntime static int8 quantisation of the convolutions (CPU deployment)")
    onx.add_argument("--calibrate", metavar="DIR", help="sample images for --int8")
    onx.add_argument("--winograd", action="store_true",
                     help="3x3 convolutions as Winograd F(4x4, 3x3) in standard ops: faster on "
                          "onnxruntime's CPU provider, not on GPUs (docs/export.md)")
    onx.add_argument("--from", dest="from_format", choices=["junyanz-cyclegan", "yunjey-stargan"],
                     help="SOURCE is a generator checkpoint saved by this other code base")
    onx.add_argument("--domains", metavar="A,B,...",
                     help="with --from yunjey-stargan: the names of the generator's labels, in order")
    onx.add_argument("--image-size", type=int,
                     help="the size the model is checked at and records (default: the run's; "
                          "with --from 256 for CycleGAN, 128 for StarGAN)")
    onx.add_argument("--debug", action="store_true", help="show tracebacks")
    add_runtime_commands(sub)
    sub.add_parser("bench", help="benchmarks: `pyganx bench ops [--quick] [--device D]`", add_help=False)
    sub.add_parser("train", help="train a GAN variant: `pyganx train VARIANT --help`", add_help=False)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    name = f"pyganx {args.command}" + (f" {args.data_command}" if args.command == "data" else "")
    if args.command in ("translate", "serve"):
        return runtime_command(args, name)
    handlers = {"info": _info, "plugins": _plugins, "data": _data, "sample": _sample, "eval": _eval,
                "export": _export}
    return run_command(name, handlers[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
