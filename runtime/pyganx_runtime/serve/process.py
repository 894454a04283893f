"""The service as its own process, on a free loopback port: what the browser test, the
load benchmark and anyone scripting against ``serve`` start and stop."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """A process's resident memory now, in MiB (Linux; NaN elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_server(models: list, *flags: str, python: str = sys.executable, module: str = "pyganx_runtime",
                 timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """``python -m MODULE serve MODELS --port <free> FLAGS`` (MODULE: pyganx_runtime or
    pyganx) in a subprocess, stdout and stderr in one pipe, once /healthz answers 200:
    (the process, its URL). Raises RuntimeError, with what the server printed, when it
    exits or does not answer within ``timeout`` seconds."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = subprocess.Popen([python, "-m", module, "serve", *map(str, models), "--host", LOOPBACK,
                             "--port", str(port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{module} serve did not start: {_output(proc)}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> str:
    """Stops it (SIGTERM, then SIGKILL after 20 s); what it printed."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    return _output(proc)


def _output(proc: subprocess.Popen) -> str:
    """What the process printed (start_server pipes stdout and stderr into one)."""
    return proc.stdout.read() if proc.stdout is not None else ""


__all__ = ["LOOPBACK", "free_port", "rss_mib", "start_server", "stop_server"]
