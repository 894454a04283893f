"""The tuning cache: one JSON file of decisions per device, torch and pyganx version
under ``<cache dir>/tuning/``, written atomically and merged with what other processes
wrote; and :func:`describe`, what ``pyganx info`` shows of it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from pyganx_runtime.files import atomic_write_text

from .._paths import cache_dir
from .._version import __version__
from .keys import device_name
from .state import STATE, Decision, error_multiple, warn_once

CACHE_VERSION = 1


def cache_path(device: torch.device) -> Path:
    """The cache file of this device, torch and pyganx version."""
    ident = f"{device_name(device)}|torch {torch.__version__}|pyganx {__version__}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / "tuning" / f"{device.type}-{digest}.json"


def _header(device: torch.device) -> dict:
    return {"version": CACHE_VERSION, "device": device_name(device), "torch": torch.__version__,
            "pyganx": __version__}


def read_cache(device: torch.device) -> dict[str, dict]:
    """The cache file's entries for this device (empty when missing; a corrupt or foreign
    file gives one warning and counts as empty)."""
    path = cache_path(device)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warn_once(f"read:{path}", f"ignoring the tuning cache {path} ({err}); measuring again")
        return {}
    header = _header(device)
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in header.items()) \
            or not isinstance(data.get("decisions"), dict):
        warn_once(f"foreign:{path}", f"ignoring the tuning cache {path}: it was not written for "
                                     f"{header['device']}, torch {header['torch']} and pyganx "
                                     f"{header['pyganx']}; measuring again")
        return {}
    return data["decisions"]


def lookup(device: torch.device, text: str, candidates) -> Decision | None:
    """The cached decision for this key, if its choice is among ``candidates``."""
    if STATE.disk is None:
        STATE.disk = read_cache(device)
    entry = STATE.disk.get(text)
    try:
        if entry is not None and entry["choice"] in candidates:
            return Decision(entry["choice"], "cache", dict(entry.get("times_ms", {})),
                            dict(entry.get("errors", {})), list(entry.get("refused", [])))
    except (KeyError, TypeError):
        pass
    return None


def store(device: torch.device, text: str, decision: Decision) -> None:
    """Writes a decision to the cache file, merged with what other processes wrote (a
    file that cannot be written gives one warning)."""
    path = cache_path(device)
    entries = read_cache(device)          # merge with what other processes wrote meanwhile
    entry = asdict(decision)
    del entry["source"]
    entries[text] = entry
    if STATE.disk is not None:
        STATE.disk[text] = entry
    try:
        atomic_write_text(path, json.dumps({**_header(device), "decisions": entries}, indent=1) + "\n")
    except OSError as err:
        warn_once(f"write:{path}", f"cannot write the tuning cache {path} ({err}); decisions "
                                   f"are kept for this process only")


def describe(device: torch.device | str = "cpu") -> dict:
    """What ``pyganx info`` shows: the mode, whether measuring is on, the cache file and
    the decisions in it (with this process's own)."""
    device = torch.device(device)
    entries = read_cache(device)
    rows = {text: Decision(e.get("choice", "?"), "cache", e.get("times_ms", {}), e.get("errors", {}),
                           e.get("refused", []))
            for text, e in entries.items() if isinstance(e, dict)}
    rows.update({k: d for k, d in STATE.used.items()})
    return {"mode": STATE.mode, "measuring": STATE.measuring, "error_multiple": error_multiple(),
            "device": device_name(device), "cache": str(cache_path(device)),
            "decisions": [{"key": k, "choice": d.choice, "why": d.why()} for k, d in sorted(rows.items())]}
