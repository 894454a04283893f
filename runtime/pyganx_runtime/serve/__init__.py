"""``pyganx-runtime serve`` (and ``pyganx serve``): exported translators behind an HTTP
API and a web page.

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart, prometheus-client)
besides onnxruntime. ``create_app(load_models(paths, config), config)`` gives the ASGI
app for any ASGI server; ``serve`` runs it with uvicorn.
"""
from __future__ import annotations

from .app import create_app
from .config import ServeConfig
from .limits import ServeError
from .models import load_models

__all__ = ["ServeConfig", "ServeError", "create_app", "load_models", "serve"]


def serve(paths, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info", prog: str = "pyganx-runtime serve") -> None:
    """Loads the models, then serves them until interrupted; ``prog`` names the command
    in what it prints."""
    import ipaddress
    import sys

    import uvicorn

    from .connection import head_timeout_protocol

    config = config or ServeConfig()
    models = load_models(paths, config)
    app = create_app(models, config)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"{prog}: listening on {host}, reachable from other machines"
              + ("" if config.token else "; no --token is set, so anyone who can reach it may use it"),
              file=sys.stderr)
    names = ", ".join(m.name + ("" if m.translator else " (noise model)") for m in models.values())
    shown = f"[{host}]" if ":" in host else host
    print(f"{prog}: {names} at http://{shown}:{port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=head_timeout_protocol(config.header_timeout),
                timeout_keep_alive=config.keep_alive_timeout, limit_concurrency=config.limit_concurrency,
                timeout_graceful_shutdown=config.shutdown_timeout)
