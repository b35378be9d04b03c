"""Weights on disk: safetensors only (never pickle), atomic writes, deterministic headers."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from diffspeed.atomic import atomic_write, atomic_write_bytes, atomic_write_json, umask_mode
from diffspeed.errors import WeightsError

__all__ = [
    "INT8_SCALE",
    "PICKLE_SUFFIXES",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "cached_tensors",
    "check_safetensors_folder",
    "compress_int8",
    "canonical_safetensors",
    "CONFIG_META",
    "check_weight_file",
    "config_hash",
    "deterministic_safetensors",
    "load_state_into",
    "load_weights",
    "param_bytes",
    "read_json_config",
    "read_model_config",
    "read_metadata",
    "save_model",
    "save_weights",
    "umask_mode",
    "weights_digest",
]


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able config (stored in weight files to catch mismatches)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


#: Suffix of the per-output-channel scale stored beside an int8-compressed tensor.
INT8_SCALE = ".__int8_scale"


def compress_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-output-channel symmetric int8 storage of float matrices/kernels (>= 1024 values).

    ``w ~= q * scale`` with ``scale = max|w_row| / 127``; small and 1-D tensors stay as they
    are. :func:`load_weights` undoes it (to float32) transparently. Halves fp16 file size;
    the reconstruction error is <= scale / 2 per weight.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if v.is_floating_point() and v.ndim >= 2 and v.numel() >= 1024:
            rows = v.detach().float().reshape(v.shape[0], -1)
            scale = (rows.abs().amax(1) / 127).clamp_min(1e-12)
            out[k] = torch.round(rows / scale[:, None]).to(torch.int8).reshape(v.shape)
            out[k + INT8_SCALE] = scale
        else:
            out[k] = v
    return out


def _decompress_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tensors.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = tensors.get(k + INT8_SCALE)
        if scale is not None:
            shape = (-1,) + (1,) * (v.ndim - 1)
            v = v.float() * scale.float().view(shape)
        out[k] = v
    return out


def save_weights(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    *,
    int8: bool = False,
) -> None:
    """Save tensors as safetensors atomically; record the config hash (and ``metadata``).

    With ``int8=True`` large float tensors are stored compressed (:func:`compress_int8`).
    """
    meta = {"format": "pt", "diffspeed": "1", **(metadata or {})}
    if config is not None:
        meta["config_hash"] = config_hash(config)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if int8:
        flat = {k: v.contiguous() for k, v in compress_int8(flat).items()}
    atomic_write_bytes(path, deterministic_safetensors(flat, meta))


def deterministic_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes whose header is canonical: metadata keys sorted, tensors in data order.

    The ``safetensors`` writer emits metadata in hash-map order, so two identical saves could
    differ byte for byte; this rewrites the JSON header (same entries, same data) so the
    same tensors and metadata always give the same file hash.
    """
    return canonical_safetensors(safetensors_bytes(tensors, metadata=metadata))


def canonical_safetensors(raw: bytes) -> bytes:
    """The same safetensors file with its JSON header in canonical order (see
    :func:`deterministic_safetensors`); for files another library wrote."""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None) or {}
    entries = sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0]))
    canon: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    canon.update(entries)
    text = json.dumps(canon, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def check_weight_file(path: str | os.PathLike, what: str = "weight file") -> Path:
    """``path`` as a Path if it is an existing file; a :class:`WeightsError` saying what to
    pass otherwise (a folder, a missing file)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))[:3]
        raise WeightsError(
            f"{what} {path} is a folder; pass the .safetensors file itself"
            + (f" (this folder holds {', '.join(found)})" if found else "")
        )
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; check the path")
    return path


#: Safetensors metadata key holding a model's JSON config (the ``.json`` beside is a copy).
CONFIG_META = "diffspeed_config"


def save_model(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    hash_config: dict[str, Any] | None = None,
    *,
    int8: bool = False,
) -> Path:
    """Save a model as one atomic unit: weights with ``config`` in the header (the config
    hash over ``hash_config``, default ``config``), then a readable ``.json`` copy beside.

    A kill between the two writes leaves a complete model (:func:`read_model_config` reads
    the header first).
    """
    meta = {CONFIG_META: json.dumps(config, sort_keys=True)}
    save_weights(path, tensors, config if hash_config is None else hash_config, meta, int8=int8)
    atomic_write_json(Path(path).with_suffix(".json"), config)
    return Path(path)


def read_model_config(
    path: str | os.PathLike, what: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The config of a model saved by :func:`save_model`: from the weight file's header, or
    (older files) from the ``.json`` beside it; a :class:`WeightsError` naming what is wrong."""
    path = Path(path)
    text = read_metadata(path).get(CONFIG_META)
    if text is None:
        return read_json_config(path.with_suffix(".json"), what, required)
    cfg = json.loads(text)
    missing = [k for k in required if k not in cfg]
    if missing:
        raise WeightsError(f"{path} is not a {what}: its config lacks {missing}")
    return cfg


def read_json_config(
    path: str | os.PathLike, what: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object from ``path`` with the ``required`` keys, or a :class:`WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is missing; a {what} needs its JSON config beside it")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(
            f"{path} is not valid JSON ({e}); restore the {what}'s config written with it"
        ) from None
    missing = [k for k in required if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise WeightsError(
            f"{path} is not a {what} config: it needs the keys {list(required)} (missing "
            f"{missing}); restore the config written with the weights"
        )
    return cfg


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors header (raises WeightsError if not safetensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None


def load_weights(
    path: str | os.PathLike,
    config: dict[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load a safetensors file; if ``config`` is given, refuse a file written for another one."""
    path = check_weight_file(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{path} is not a valid safetensors file ({e}); diffspeed never unpickles "
            "weights - convert .bin/.ckpt files with safetensors first"
        ) from None
    if config is not None:
        want = config_hash(config)
        got = read_metadata(path).get("config_hash")
        if got is not None and got != want:
            raise WeightsError(
                f"{path} was written for a different config (hash {got}, expected {want}); "
                "load it with the config it was saved with"
            )
    return _decompress_int8(tensors)


def cached_tensors(
    path: str | os.PathLike | None,
    key: str | None,
    compute: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Tensors cached in a safetensors file under a ``key`` stored in its header.

    The file at ``path`` is reused when its key equals ``key``; otherwise (or with no file,
    or ``key`` None: nothing to compare) ``compute()`` runs and its result is written there
    atomically. ``path`` None: no cache.
    """
    reusable = path is not None and key is not None and Path(path).is_file()
    if reusable and read_metadata(path).get("key") == key:
        return load_weights(path)
    tensors = compute()
    if path is not None:
        save_weights(path, tensors, metadata={"key": key or ""})
    return tensors


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module`` exactly, or raise WeightsError naming the mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or bad:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"shape mismatch {bad[:3]}" if bad else "",
            )
            if part
        )
        raise WeightsError(f"{source} does not match the model's config: {detail}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``module`` once (shared tensors deduplicated)."""
    out = dict(module.named_parameters())
    persistent = set(module.state_dict())
    out.update({k: b for k, b in module.named_buffers() if k in persistent})
    return out


def weights_digest(module: Any) -> str | None:
    """Short sha256 of a module's weights: what identifies a model in caches and run manifests.

    Hashes, in name order, each parameter's and persistent buffer's name and raw bytes in its
    own dtype (an fp16 copy has another digest than its fp32 original; the device does not
    matter). ``None`` for something that is not a module (a plain function has no weights).
    """
    if not isinstance(module, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for k, v in sorted(_module_tensors(module).items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def param_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers, each shared tensor once (0 for a non-module).

    The in-memory size of the weights a method runs: an int8-quantized or fp16 model counts
    at its storage dtype.
    """
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


#: File suffixes of pickled weights, which diffspeed never loads.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_safetensors_folder(folder: str | os.PathLike) -> None:
    """Refuse a diffusers model or pipeline folder that holds pickled weights.

    ``from_pretrained(..., use_safetensors=True)`` then loads only ``.safetensors`` files; a
    folder with ``.bin`` / ``.ckpt`` weights would otherwise be unpickled (arbitrary code).
    """
    from diffspeed.errors import WeightsError

    root = Path(folder)
    if not root.is_dir():
        raise WeightsError(f"{root} is not a folder; pass a diffusers model or pipeline folder")
    pickled = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES
    )
    if pickled:
        raise WeightsError(
            f"{root} holds pickled weights ({', '.join(pickled[:3])}); diffspeed loads "
            "safetensors only. Convert them (load once in a trusted session, then "
            "save_pretrained(..., safe_serialization=True)) and remove the pickled files"
        )
