"""The `pyganx` command: `info`, `plugins`, `train`, `sample`, `eval`, `export`,
`translate`, `serve`, `data` and `bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2), as
    every pyganx error is; `--help` still shows the full usage."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


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
    from .engine.trainer import pick_device
    info["default_device"] = str(pick_device())
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


def _fail(command: str, e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"pyganx {command}: {e}", file=sys.stderr)
    return 1


def _sample(args) -> int:
    from .engine.sample import sample_run

    try:
        folder, counts = sample_run(args.run, args.out, args.n, args.device,
                                    label=args.label, domain=args.domain)
    except (ValueError, RuntimeError, OSError) as e:  # TrainError is a RuntimeError
        return _fail("sample", e, args.debug)
    print(f"wrote {folder / 'grid.png'} and " + ", ".join(f"{v} {k!r}" for k, v in counts.items())
          + f" images under {folder}")
    return 0


def _eval(args) -> int:
    from .metrics.evaluate import eval_file, evaluate_checkpoints, evaluate_run, format_result

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        if args.all_checkpoints:
            if args.model:
                raise ValueError("--all-checkpoints evaluates the run's checkpoints, not a --model")
            evaluate_checkpoints(args.run, device=args.device, log=log)
            print(f"figures written to {Path(args.run) / 'eval-checkpoints.json'} and eval-checkpoints.png")
            return 0
        result = evaluate_run(args.run, device=args.device, log=log, model=args.model)
    except (ValueError, RuntimeError, OSError) as e:  # TrainError is a RuntimeError
        return _fail("eval", e, args.debug)
    print(format_result(result))
    print(f"figures written to {eval_file(result['run'], args.model)}")
    return 0


def _export(args) -> int:
    try:
        from .export import export_generator
        res = export_generator(args.source, args.out, args.generator, static=args.static,
                               with_preprocessing=args.with_preprocessing,
                               from_format=args.from_format, image_size=args.image_size,
                               int8=args.int8, calibrate=args.calibrate, fp16=args.fp16,
                               winograd=args.winograd,
                               foreign_domains=tuple(args.domains.split(",")) if args.domains else None)
    except (ValueError, RuntimeError, OSError) as e:  # TrainError is a RuntimeError
        return _fail("export", e, args.debug)
    m = res.metadata
    inputs, domains = json.loads(m["pyganx.inputs"]), json.loads(m["pyganx.domains"])
    if inputs == ["image"]:
        what = f"{' -> '.join(domains)}, {m['pyganx.io_layout']}, " + \
            (f"static {res.checked_shapes[0]}" if args.static else "dynamic N, H, W") + \
            f" (H, W multiples of {m['pyganx.size_multiple']})"
    else:
        what = f"inputs {', '.join(inputs)}" + (f"; {'classes' if 'label' in inputs else 'domains'} "
                                                f"{', '.join(domains)}" if domains else "") + \
            ("" if "z" in inputs else f"; H, W multiples of {m['pyganx.size_multiple']}")
    print(f"wrote {res.path} ({res.path.stat().st_size / 2**20:.1f} MiB): {m['pyganx.plugin']} "
          f"{m['pyganx.generator']}, {what}; onnxruntime matches PyTorch within {res.max_abs_error:.1e}")
    q = res.quality
    if q:
        print(f"int8 against float32 on {int(q['images'])} calibration images: PSNR {q['psnr_db']:.1f} dB, "
              f"SSIM {q['ssim']:.4f}, largest difference {q['max_abs_diff']:.3f} (outputs in [-1, 1])")
    return 0


def _translate(args) -> int:
    try:
        from .runtime import Translator, translate_files
        tr = Translator(args.model, device=args.device, tile=args.tile, overlap=args.overlap,
                        tile_stats=args.tile_stats)
        done, errors = translate_files(tr, args.inputs, args.out, args.batch_size,
                                       progress=not args.no_progress, domain=args.domain)
    except ImportError as e:
        return _fail("translate", RuntimeError(f"needs onnxruntime: pip install 'pyganx[cpu]' (or [gpu]) ({e})"),
                     args.debug)
    except (ValueError, RuntimeError, OSError) as e:
        return _fail("translate", e, args.debug)
    for msg in errors:
        print(f"pyganx translate: skipped {msg}", file=sys.stderr)
    print(f"translated {done} image(s) into {args.out} with {tr.providers[0]}"
          + (f"; {len(errors)} unreadable input(s) skipped" if errors else ""))
    return 1 if errors else 0


def _serve(args) -> int:
    try:
        from .serve import ServeConfig, serve
    except ImportError as e:
        return _fail("serve", RuntimeError(f"needs the serve extra: pip install 'pyganx[serve,cpu]' ({e})"),
                     args.debug)
    for name in ("max_batch", "max_queue", "max_upload_mb", "max_pixels"):
        if getattr(args, name) < 1:
            return _fail("serve", ValueError(f"--{name.replace('_', '-')} must be at least 1"), args.debug)
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=max(0.0, args.max_wait_ms),
                         max_queue=args.max_queue, token=args.token or os.environ.get("PYGANX_SERVE_TOKEN") or None,
                         max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         tile=args.tile or None, overlap=args.overlap, device=args.device, threads=args.threads)
    try:
        serve(args.models, args.host, args.port, config, log_level=args.log_level)
    except ImportError as e:
        return _fail("serve", RuntimeError(f"needs onnxruntime: pip install 'pyganx[cpu]' (or [gpu]) ({e})"),
                     args.debug)
    except (ValueError, RuntimeError, OSError) as e:
        return _fail("serve", e, args.debug)
    return 0


def _train(argv: list[str]) -> int:
    from . import registry
    from .plugin import add_config_arguments, config_from_arguments

    variant = argv[0] if argv and not argv[0].startswith("-") else None
    if variant is None:
        names = ", ".join(registry.names()) or "none installed"
        print(f"usage: pyganx train VARIANT [options]; VARIANT is one of: {names}\n"
              f"`pyganx train VARIANT --help` lists a variant's options", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        cls = registry.get(variant)
    except registry.PluginError as e:
        print(f"pyganx train: {e}", file=sys.stderr)
        return 1
    ap = Parser(prog=f"pyganx train {variant}", description=(cls.__doc__ or "").strip().splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="data folder (trainA/ trainB/ [testA/ testB/], class folders, ...)")
    src.add_argument("--demo", choices=["digits", "photos"], help="a bundled offline data set")
    ap.add_argument("--data-a", help="domain A folder (unpaired data)")
    ap.add_argument("--data-b", help="domain B folder (unpaired data)")
    ap.add_argument("-o", "--out", required=True, help="run directory")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="training iterations")
    length.add_argument("--epochs", type=int, help="passes over the training set")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                    help="continue from CKPT, or from the run's latest checkpoint")
    ap.add_argument("--image-size", type=int, help="training size (default: the data set's, or 256)")
    ap.add_argument("--batch-size", type=int, default=1, help="per process")
    ap.add_argument("--channels", type=int, choices=[1, 3],
                    help="1 grey or 3 RGB (default: RGB unless every image is grey)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="autocast dtype (fp16 with a GradScaler); auto: bf16 or fp16 on a GPU, fp32 elsewhere")
    ap.add_argument("--channels-last", action="store_true",
                    help="networks and batches in channels_last memory format (fast on tensor-core GPUs)")
    ap.add_argument("--checkpoint-activations", action="store_true",
                    help="keep only segment inputs of the generators for backward and recompute the rest "
                         "(less memory, about one more forward of time)")
    ap.add_argument("--sync-bn", action="store_true",
                    help="under torchrun on GPUs: batch-norm statistics over all processes (SyncBatchNorm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    ap.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    ap.add_argument("--ema", type=float, help="keep an EMA of the generators with this decay")
    ap.add_argument("--sample-every", type=int, default=200, help="steps between sample grids")
    ap.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    ap.add_argument("--keep", type=int, default=3, help="checkpoints kept (0: all)")
    ap.add_argument("--device", help="cuda, mps or cpu (default: the first available)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--skip-bad-images", action="store_true",
                    help="warn about unreadable images and train on the others, instead of stopping")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    try:
        add_config_arguments(ap, cls.Config)
    except (TypeError, argparse.ArgumentError) as e:
        print(f"pyganx train: plugin {variant!r}: {e}", file=sys.stderr)
        return 1
    args = ap.parse_args(argv[1:])
    if args.steps is None and args.epochs is None:
        ap.error("give --steps N or --epochs N")
    if not (args.data or args.demo or (args.data_a and args.data_b)):
        ap.error("give --data DIR, --data-a DIR --data-b DIR, or --demo NAME")
    from .engine import Trainer, TrainOptions

    opts = TrainOptions(out=args.out, data=args.data, data_a=args.data_a, data_b=args.data_b,
                        demo=args.demo, steps=args.steps, epochs=args.epochs, resume=args.resume,
                        image_size=args.image_size, batch_size=args.batch_size,
                        precision=args.precision, seed=args.seed,
                        deterministic=args.deterministic, workers=args.workers, ema=args.ema,
                        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                        keep=args.keep, device=args.device, channels=args.channels,
                        channels_last=args.channels_last, checkpoint_activations=args.checkpoint_activations,
                        sync_bn=args.sync_bn,
                        progress=not args.no_progress, skip_bad_images=args.skip_bad_images)
    try:
        result = Trainer(variant, cls, config_from_arguments(cls.Config, args), opts).fit()
    except (ValueError, RuntimeError, OSError) as e:  # TrainError is a RuntimeError
        return _fail("train", e, args.debug)
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
    ev = sub.add_parser("eval", help="quality figures of a trained run (writes RUN_DIR/eval.json)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("run", metavar="RUN_DIR", help="run directory (or one checkpoint in it)")
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
    trn = sub.add_parser("translate", help="run an exported model on image files or folders",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    trn.add_argument("model", help="a model written by `pyganx export`")
    trn.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    trn.add_argument("-o", "--out", required=True, help="output folder; names are kept")
    trn.add_argument("--batch-size", type=int, default=1, help="images of one size per run")
    trn.add_argument("--domain", help="target domain name, for models that take one (StarGAN)")
    trn.add_argument("--tile", type=int, metavar="PX",
                     help="translate images larger than PX tile by tile, with whole-image norm statistics")
    trn.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles (with --tile)")
    trn.add_argument("--tile-stats", choices=["exact", "fast"], default="exact",
                     help="norm statistics for tiles: gathered over all tiles, one sweep per norm layer "
                          "(exact), or from the image downscaled to one tile (fast, approximate)")
    trn.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    trn.add_argument("--no-progress", action="store_true", help="no progress bar")
    trn.add_argument("--debug", action="store_true", help="show tracebacks")
    srv = sub.add_parser("serve", help="exported models behind an HTTP API and a web page (docs/serve.md)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    srv.add_argument("models", nargs="+", metavar="MODEL.onnx",
                     help="models written by `pyganx export`; each is served as its file name without .onnx")
    srv.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on; anything but loopback exposes the service to the network")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/ and /metrics "
                                     "(or set PYGANX_SERVE_TOKEN, which `ps` does not show)")
    srv.add_argument("--max-batch", type=int, default=8, help="images of one model and size run together")
    srv.add_argument("--max-wait-ms", type=float, default=10.0,
                     help="how long the oldest waiting request waits for others to batch with")
    srv.add_argument("--max-queue", type=int, default=64,
                     help="requests waiting per model; more are answered 503 with Retry-After")
    srv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (413 above)")
    srv.add_argument("--max-pixels", type=int, default=4096 * 4096,
                     help="largest image in pixels, checked before decoding (413 above)")
    srv.add_argument("--tile", type=int, default=1024, metavar="PX",
                     help="images larger than PX are translated tile by tile (0: never)")
    srv.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    srv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    srv.add_argument("--threads", type=int, help="onnxruntime threads per model (default: all cores)")
    srv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="uvicorn's log level (info logs every request)")
    srv.add_argument("--debug", action="store_true", help="show tracebacks")
    sub.add_parser("bench", help="benchmarks: `pyganx bench ops [--quick] [--device D]`", add_help=False)
    sub.add_parser("train", help="train a GAN variant: `pyganx train VARIANT --help`", add_help=False)
    if argv and argv[0] == "train":
        return _train(argv[1:])
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
    if args.command == "sample":
        return _sample(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "export":
        return _export(args)
    if args.command == "translate":
        return _translate(args)
    if args.command == "serve":
        return _serve(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
