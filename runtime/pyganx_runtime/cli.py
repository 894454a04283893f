"""The ``pyganx-runtime`` command (``translate``, ``serve`` and ``triton-repository``), and
the parts of it that ``pyganx``'s own command line shares: the ``translate``/``serve``
arguments and handlers, one-line usage errors, and the rule for reporting errors.

Errors: a :class:`~pyganx_runtime.errors.PyganxError` or an ``OSError`` is one line on
stderr (exit status 1). Anything else is a bug or an environment problem: one line
with its exception type, whether it is an out-of-memory error, and a pointer to
``--debug``, which shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

from ._version import __version__
from .errors import DependencyError, PyganxError, UsageError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2);
    ``--help`` still shows the full usage."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out (Python's MemoryError, torch's and
    onnxruntime's out-of-memory errors)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return "out of memory" in text or "failed to allocate memory" in text


def describe_failure(e: BaseException) -> str:
    """The one line for an error: its message for a PyganxError or an OSError, else its
    type and first line, flagged as out of memory where it is one, with a pointer to
    ``--debug``."""
    first = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, (PyganxError, OSError)):
        return first or type(e).__name__
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if is_out_of_memory(e):
        return (f"out of memory ({what}); try a smaller batch or image size "
                f"(--debug shows the traceback)")
    return f"unexpected {what} (a bug or a broken installation; --debug shows the traceback)"


def run_command(prog: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``handler(args)``, with errors reported as the module doc says; ``args.debug``
    lets every error through with its traceback."""
    if getattr(args, "debug", False):
        return handler(args)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        shown = warnings.showwarning
        warnings.showwarning = lambda message, *rest, **kw: print(f"{prog}: warning: {message}",
                                                                  file=sys.stderr)
        try:
            return handler(args)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - every error becomes one line (see describe_failure)
            print(f"{prog}: {describe_failure(e)}", file=sys.stderr)
            return 1
        finally:
            warnings.showwarning = shown


# --- translate --------------------------------------------------------------------

def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model written by `pyganx export`")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    p.add_argument("-o", "--out", required=True, help="output folder; names are kept")
    p.add_argument("--batch-size", type=int, default=1, help="images of one size per run")
    p.add_argument("--domain", help="target domain name, for models that take one (StarGAN)")
    p.add_argument("--tile", type=int, metavar="PX",
                   help="translate images larger than PX tile by tile, with whole-image norm statistics")
    p.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles (with --tile)")
    p.add_argument("--tile-stats", choices=["exact", "fast"], default="exact",
                   help="norm statistics for tiles: gathered over all tiles, one sweep per norm layer "
                        "(exact), or from the image downscaled to one tile (fast, approximate)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def translate_command(args: argparse.Namespace, prog: str) -> int:
    """Runs ``translate`` as parsed by :func:`add_translate_arguments`; exit status 1
    when some inputs could not be read (they are listed and skipped)."""
    from .translator import Translator, translate_files

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    tr = Translator(args.model, device=args.device, tile=args.tile, overlap=args.overlap,
                    tile_stats=args.tile_stats)
    done, errors = translate_files(tr, args.inputs, args.out, args.batch_size,
                                   progress=not args.no_progress, domain=args.domain)
    for msg in errors:
        print(f"{prog}: skipped {msg}", file=sys.stderr)
    print(f"translated {done} image(s) into {args.out} with {tr.providers[0]}"
          + (f"; {len(errors)} unreadable input(s) skipped" if errors else ""))
    return 1 if errors else 0


# --- serve ------------------------------------------------------------------------

def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="models written by `pyganx export`; each is served as its file name without .onnx")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on; anything but loopback exposes the service to the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/ and /metrics "
                                   "(or set PYGANX_SERVE_TOKEN, which `ps` does not show)")
    p.add_argument("--max-batch", type=int, default=8, help="images of one model and size run together")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long the oldest waiting request waits for others to batch with")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting per model; more are answered 503 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (413 above)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest image in pixels, checked before decoding (413 above)")
    p.add_argument("--tile", type=int, default=1024, metavar="PX",
                   help="images larger than PX are translated tile by tile (0: never)")
    p.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="onnxruntime threads per model (default: all cores)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a request's line and headers may take to arrive, however slowly they "
                        "trickle in; then 408 and the connection is closed")
    p.add_argument("--keep-alive-timeout", type=int, default=5, metavar="S",
                   help="seconds an idle connection is kept open after a response (uvicorn's timeout_keep_alive)")
    p.add_argument("--limit-concurrency", type=int, default=256, metavar="N",
                   help="open connections (or requests in progress) at most; beyond it uvicorn answers 503")
    p.add_argument("--shutdown-timeout", type=int, default=30, metavar="S",
                   help="seconds requests in progress get to finish once the service is stopped")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (info logs every request)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def serve_command(args: argparse.Namespace, prog: str) -> int:
    """Runs ``serve`` as parsed by :func:`add_serve_arguments`, until interrupted."""
    for name in ("max_batch", "max_queue", "max_upload_mb", "max_pixels", "keep_alive_timeout",
                 "limit_concurrency", "shutdown_timeout"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.header_timeout > 0:
        raise UsageError(f"--header-timeout must be more than 0 seconds, got {args.header_timeout}")
    try:
        from .serve import ServeConfig, serve
    except ImportError as e:
        raise DependencyError(f"needs the serve extra: pip install 'pyganx-runtime[serve,cpu]' ({e})") from None
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=max(0.0, args.max_wait_ms),
                         max_queue=args.max_queue, token=args.token or os.environ.get("PYGANX_SERVE_TOKEN") or None,
                         max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         tile=args.tile or None, overlap=args.overlap, device=args.device, threads=args.threads,
                         header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                         limit_concurrency=args.limit_concurrency, shutdown_timeout=args.shutdown_timeout)
    serve(args.models, args.host, args.port, config, log_level=args.log_level, prog=prog)
    return 0


# --- triton-repository --------------------------------------------------------------

def add_triton_arguments(p: argparse.ArgumentParser) -> None:
    from . import triton

    p.add_argument("model", metavar="MODEL.onnx", help="an ONNX model (written by `pyganx export`, or any)")
    p.add_argument("repository", metavar="DIR", help="the model repository; other models in it are left alone")
    p.add_argument("--name", help="the model's name and folder (default: MODEL's file name without .onnx); "
                                  "an existing model of that name is replaced")
    p.add_argument("--max-batch-size", type=int, default=triton.DEFAULT_MAX_BATCH_SIZE,
                   help="the largest batch Triton's dynamic batcher forms (0: no batching; a model exported "
                        "with --static always gets 0)")
    p.add_argument("--instance-group", choices=list(triton.INSTANCE_KINDS), default=triton.DEFAULT_INSTANCE_KIND,
                   help="where the instances run (auto: on GPUs where Triton has them, else on the CPU)")
    p.add_argument("--instance-count", type=int, default=triton.DEFAULT_INSTANCE_COUNT,
                   help="model instances (per GPU on GPUs)")
    p.add_argument("--max-queue-delay-us", type=int, default=triton.DEFAULT_MAX_QUEUE_DELAY_US,
                   help="microseconds the dynamic batcher holds a request for others to join it")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def triton_command(args: argparse.Namespace, prog: str) -> int:
    """Runs ``triton-repository`` as parsed by :func:`add_triton_arguments`."""
    from .triton import write_repository

    folder = write_repository(args.model, args.repository, args.name, max_batch_size=args.max_batch_size,
                              instance_kind=args.instance_group, instance_count=args.instance_count,
                              max_queue_delay_us=args.max_queue_delay_us)
    print(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}; "
          f"serve it with `tritonserver --model-repository={args.repository}`")
    return 0


def add_runtime_commands(sub) -> None:
    """``translate`` and ``serve`` on a subparsers object (pyganx-runtime's and pyganx's)."""
    add_translate_arguments(sub.add_parser("translate", help="run an exported model on image files or folders",
                                           formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    add_serve_arguments(sub.add_parser("serve", help="exported models behind an HTTP API and a web page",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter))


def runtime_command(args: argparse.Namespace, prog: str) -> int:
    """Runs ``translate``, ``serve`` or ``triton-repository`` (``args.command``) with the
    error report of :func:`run_command`; ``prog`` names the command in messages."""
    handler = {"translate": translate_command, "serve": serve_command,
               "triton-repository": triton_command}[args.command]
    return run_command(prog, lambda a: handler(a, prog), args)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="pyganx-runtime",
                    description="Run image translators exported by `pyganx export` with onnxruntime, without torch.")
    parser.add_argument("--version", action="version", version=f"pyganx-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_runtime_commands(sub)
    add_triton_arguments(sub.add_parser("triton-repository", help="write a model into a Triton Inference Server "
                                                                  "model repository (config.pbtxt, 1/model.onnx)",
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return runtime_command(args, f"pyganx-runtime {args.command}")


if __name__ == "__main__":
    sys.exit(main())
