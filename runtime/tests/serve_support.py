"""What the service's tests share: an in-process client of a service over the test
models, and the check of a JSON error answer."""
from __future__ import annotations

from starlette.testclient import TestClient

from pyganx_runtime.serve import ServeConfig, create_app, load_models


def serve_client(models, **config) -> TestClient:
    """A client of the service holding ``models`` (name -> path), on the CPU, with
    ``config`` over ServeConfig's defaults; use it as a context manager (the lifespan)."""
    cfg = ServeConfig(device="cpu", **config)
    return TestClient(create_app(load_models(list(models.values()), cfg), cfg), raise_server_exceptions=False)


def assert_error(r, status: int, *words: str) -> str:
    """``r`` is a JSON ``{"error": ...}`` answer with ``status``, no traceback, and a
    message holding every one of ``words``; returns the message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    for w in words:
        assert w in message, (w, message)
    return message
