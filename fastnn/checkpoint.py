"""Checkpoints: parameters, optimizer state, schedule state, step and RNG state in one .npz file.

Written atomically (a temporary file in the same folder, fsync, then ``os.replace``), so a
crash mid-write leaves the previous checkpoint intact. Loading checks the whole file
against the model, optimizer and schedule first, and restores their previous state if
anything fails, so nothing is ever half-loaded.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import random
from .checks import check_int
from .files import atomic_write
from .module import Module

FORMAT = "fastnn-checkpoint-1"


class ResumeError(ValueError):
    """A checkpoint that a run cannot continue from (another model, optimizer, schedule, ...)."""


def save(path: str | os.PathLike, model: Module, optimizer=None, schedule=None, *, step: int = 0,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally ``optimizer``, ``schedule``, a step count and a JSON-able
    ``extra`` dict such as the data position) to ``path`` atomically; returns the path.
    ``step`` is an int >= 0 (what ``load`` accepts), checked before anything is written."""
    step = check_int(step, "step", 0)
    opt_state = optimizer.state_dict() if optimizer is not None else None
    meta = {
        "format": FORMAT,
        "model": _signature(model),
        "step": step,
        "optimizer": {k: v for k, v in opt_state.items() if k != "state"} if opt_state else None,
        "schedule": schedule.state_dict() if schedule is not None else None,
        "rng": {name: g.bit_generator.state for name, g in model.rngs()},
        "global_rng": random.generator().bit_generator.state,
        "extra": extra or {},
    }
    arrays = {"params": model.flat.data, **{f"buffer.{n}": v for n, v in model.named_buffers()}}
    if opt_state:
        arrays.update({f"state.{k}": v for k, v in opt_state["state"].items()})
    try:
        meta_bytes = np.frombuffer(json.dumps(meta, default=_plain).encode(), dtype=np.uint8)
    except (TypeError, ValueError) as e:      # name the part that is not JSON (extra, or a hyperparameter)
        part = next(k for k, v in meta.items() if not _json_ok(v))
        raise TypeError(f"checkpoint.save: {part}: expected JSON-able values, {e}") from None
    return atomic_write(path, lambda f: np.savez(f, meta=meta_bytes, **arrays))


def load(path: str | os.PathLike, model: Module, optimizer=None, schedule=None, *,
         check_extra: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore what ``save`` wrote into ``model`` (and ``optimizer``, ``schedule``); returns
    ``{"step": int, "extra": dict}``. Raises ValueError naming the first mismatch (a checkpoint
    of a different model, optimizer or dtype) and leaves everything as it was.
    ``check_extra(extra)`` is called before anything changes; it raises to refuse the file."""
    path = Path(path)
    meta, arrays = _read(path, arrays=True)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, got "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    keys = ("model", "step", "optimizer", "schedule", "rng", "global_rng", "extra")
    if any(k not in meta for k in keys) or "params" not in arrays:
        raise ValueError(f"{path}: not a complete fastnn checkpoint: expected {[*keys, 'params']}, got "
                         f"{sorted(meta)} and arrays {sorted(arrays)}")
    _check_model(path, meta["model"], _signature(model))
    for key in ("rng", "extra"):
        if not isinstance(meta[key], dict):
            raise ValueError(f"{path}: malformed checkpoint: expected {key} a dict, got {meta[key]!r:.200}")
    if isinstance(meta["step"], bool) or not isinstance(meta["step"], int) or meta["step"] < 0:
        raise ValueError(f"{path}: expected step an int >= 0, got {meta['step']!r}")
    if optimizer is not None and meta["optimizer"] is None:
        raise ValueError(f"{path}: holds no optimizer state, but an optimizer was given")
    if schedule is not None and meta["schedule"] is None:
        raise ValueError(f"{path}: holds no schedule state, but a schedule was given")
    rngs = dict(model.rngs())
    if set(rngs) != set(meta["rng"]):
        raise ValueError(f"{path}: random generators {sorted(meta['rng'])}, model has {sorted(rngs)}")
    params = arrays["params"]
    if params.shape != model.flat.data.shape or params.dtype != model.flat.data.dtype:
        raise ValueError(f"{path}: expected params of {model.flat.data.dtype}{model.flat.data.shape} (this model's "
                         f"flat buffer), got {params.dtype}{params.shape}")
    buffers = dict(model.named_buffers())
    for n, b in buffers.items():
        saved = arrays.get(f"buffer.{n}")
        if saved is None or saved.shape != b.shape or saved.dtype != b.dtype:
            raise ValueError(f"{path}: expected buffer {n} of {b.dtype}{b.shape}, got "
                             f"{'none' if saved is None else f'{saved.dtype}{saved.shape}'}")
    for name, g in rngs.items():
        random.check_state(g, meta["rng"][name], f"{path}: malformed checkpoint: random generator {name}")
    random.check_state(random.generator(), meta["global_rng"], f"{path}: malformed checkpoint: global random generator")
    if check_extra is not None:
        check_extra(meta["extra"])

    shared = random.generator().bit_generator
    before = (model.flat.data.copy(), optimizer.state_dict() if optimizer else None,
              schedule.state_dict() if schedule else None, {n: g.bit_generator.state for n, g in rngs.items()},
              shared.state, {n: b.copy() for n, b in buffers.items()})
    try:
        shared.state = meta["global_rng"]
        if schedule is not None:    # first: the optimizer's groups then set the saved lr, as in torch
            schedule.load_state_dict(meta["schedule"])      # (an lr set by hand since the schedule's step)
        if optimizer is not None:
            state = {k: v for k, v in arrays.items() if k.startswith("state.")}
            optimizer.load_state_dict({**meta["optimizer"], "state": {k[6:]: v for k, v in state.items()}})
        for name, g in rngs.items():
            g.bit_generator.state = meta["rng"][name]
        model.flat.data[...] = params
        for n, b in buffers.items():
            b[...] = arrays[f"buffer.{n}"]
    except Exception as e:
        model.flat.data[...] = before[0]
        for n, b in buffers.items():
            b[...] = before[5][n]
        if schedule is not None:
            schedule.load_state_dict(before[2])
        if optimizer is not None:
            optimizer.load_state_dict(before[1])
        for name, g in rngs.items():
            g.bit_generator.state = before[3][name]
        shared.state = before[4]
        if isinstance(e, (TypeError, KeyError)):            # a malformed field of a readable file
            raise ValueError(f"{path}: malformed checkpoint, nothing was loaded ({type(e).__name__}: {e})") from e
        raise
    return {"step": meta["step"], "extra": meta["extra"]}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata ``save`` wrote (step, model signature, optimizer and schedule settings,
    extra), without the arrays; ValueError for a file that is not a readable checkpoint."""
    return _read(Path(path), arrays=False)[0]


def _read(path: Path, arrays: bool) -> tuple[Any, dict[str, np.ndarray]]:
    try:
        with open(path, "rb") as head:      # np.load takes any other file for a pickle (allow_pickle's hint)
            if head.read(6) == b"\x93NUMPY":
                raise ValueError("a single .npy array, not an .npz archive")
        if not zipfile.is_zipfile(path):
            raise ValueError("not an .npz (zip) archive")
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["meta"].tobytes())
            return meta, {k: f[k] for k in f.files if k != "meta"} if arrays else {}
    # zipfile's own errors for damaged headers: an unknown compression method or flag
    # (NotImplementedError), an encryption flag (RuntimeError), data that does not inflate (zlib.error)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, RuntimeError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable fastnn checkpoint ({e})") from e


def _signature(model: Module) -> dict:
    flat = model.flat
    return {"dtype": str(flat.dtype), "size": int(flat.data.size),
            "params": [[name, list(slot.shape)] for name, slot in flat.slots.items()],
            "buffers": [[name, list(b.shape)] for name, b in model.named_buffers()]}


def _check_model(path: Path, saved: Any, current: dict) -> None:
    if (not isinstance(saved, dict) or not {"dtype", "size", "params"} <= set(saved)
            or not isinstance(saved["params"], list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[1], list) for p in saved["params"])):
        raise ValueError(f"{path}: malformed model signature: expected {{'dtype', 'size', 'params': [[name, "
                         f"shape], ...]}}, got {str(saved)[:200]}")
    if saved["dtype"] != current["dtype"]:
        raise ValueError(f"{path}: checkpoint is {saved['dtype']}, model is {current['dtype']}")
    for (sn, ss), (cn, cs) in zip(saved["params"], current["params"]):
        if sn != cn or ss != cs:
            raise ValueError(f"{path}: checkpoint of a different model: it has {sn} {tuple(ss)}, "
                             f"the model has {cn} {tuple(cs)}")
    if len(saved["params"]) != len(current["params"]) or saved["size"] != current["size"]:
        raise ValueError(f"{path}: checkpoint of a different model: {len(saved['params'])} parameters of "
                         f"{saved['size']!r:.50} elements, the model has {len(current['params'])} of "
                         f"{current['size']}")
    buffers = saved.get("buffers", [])          # none in checkpoints written before buffers existed
    if buffers != current["buffers"]:
        raise ValueError(f"{path}: checkpoint of a different model: buffers {str(buffers)[:200]}, the model has "
                         f"{str(current['buffers'])[:200]}")


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays in hyperparameters (e.g. ``lr=np.float32(1e-3)``)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"got {type(value).__name__} {value!r:.200}")


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, default=_plain)
    except (TypeError, ValueError):
        return False
    return True

