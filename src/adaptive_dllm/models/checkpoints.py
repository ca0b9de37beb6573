"""Load (and save) HF-style checkpoint directories: config.json + safetensors (+ tokenizer).

A directory holds ``config.json`` (its ``model_type`` picks the family), ``model.safetensors`` or
``model.safetensors.index.json`` with shards, optionally ``generation_config.json`` and
``tokenizer.json`` / ``tokenizer_config.json``. Tensor names are the public ones; the family's
key map renames them, and every checkpoint tensor must be used and every parameter filled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from adaptive_dllm._io import atomic_path, dumps_json, write_text
from adaptive_dllm.errors import AdllmError, CheckpointError
from adaptive_dllm.models.checks import check_finite_weights
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.models.families import FamilySpec, family_for_model_type, get_family
from adaptive_dllm.models.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from adaptive_dllm.models.transformer import Transformer

log = logging.getLogger(__name__)

#: Models that ship inside the package, by the name ``--model`` and ``load`` accept: the byte-level
#: Shakespeare model (the default) and the long-context retrieval model. A directory of the same
#: name in the working directory takes precedence (see :func:`_resolve_directory`).
BUNDLED_MODELS: Mapping[str, Path] = MappingProxyType({
    "tiny": Path(__file__).parent / "tiny",
    "retrieval": Path(__file__).parent / "retrieval",
})
BUNDLED_DIR = BUNDLED_MODELS["tiny"]
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to load onto: ``device``, or CUDA when available, else CPU.

    Raises:
        AdllmError: an unknown device string, or CUDA or MPS asked for on a machine without it.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AdllmError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AdllmError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AdllmError(f"device {device!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise AdllmError(f"device {device!r} asked for but this machine has no usable MPS "
                             "(Apple GPU); use --device cpu")
    elif dev.type != "cpu":
        raise AdllmError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} is missing; a checkpoint directory needs config.json")
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download the checkpoint") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def record_path(path: str | os.PathLike[str] | None) -> str | None:
    """``path`` as records and reports name it: a bundled model's directory or files as
    ``bundled:NAME[/FILE]`` (the same on every installation, so records compare across machines),
    any other path as given. None passes through."""
    if path is None:
        return None
    try:
        resolved = Path(path).expanduser().resolve()
    except OSError:
        return str(path)
    for name, root in BUNDLED_MODELS.items():
        try:
            rel = resolved.relative_to(root.resolve())
        except ValueError:
            continue
        return f"bundled:{name}" if rel == Path(".") else f"bundled:{name}/{rel.as_posix()}"
    return str(path)


def _resolve_directory(path: str | os.PathLike[str] | None, *, download: bool = False) -> Path:
    """The checkpoint directory ``path`` names: None is the bundled Shakespeare model; an existing
    directory is that directory; a bare bundled name (a ``str`` such as ``"retrieval"``) is the
    bundled model; an ``org/name`` is a hub id when ``download``. A local directory wins over a
    bundled name so that a checkpoint that happens to be called ``retrieval`` still loads as
    before; ``./retrieval`` is always the path."""
    if path is None:
        return BUNDLED_DIR
    directory = Path(path).expanduser()
    text = str(path)
    bundled = BUNDLED_MODELS.get(text) if isinstance(path, str) else None
    if directory.is_dir():
        if bundled is not None:
            log.warning("loading the local directory %r, not the bundled model %r of the same "
                        "name (run from another directory to get the bundled one)", text, text)
        return directory
    if bundled is not None:
        return bundled
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if download and looks_like_hub_id:
        return _download_from_hub(text)
    if directory.exists():
        raise CheckpointError(f"model {text!r} is a file; pass its checkpoint directory")
    names = ", ".join(BUNDLED_MODELS)
    if download:
        raise CheckpointError(f"model directory {text!r} does not exist and is not a bundled model "
                              f"({names}) or a hub id (org/name) to download; pass a local "
                              "checkpoint directory")
    raise CheckpointError(
        f"model directory {text!r} does not exist and is not a bundled model ({names}); pass a "
        "local checkpoint directory, or fetch a Hugging Face hub id with --download "
        "(download=True in ad.load)")


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"--download {repo_id!r} needs huggingface_hub (pip install 'adaptive-dllm[hub]'), "
            "or download the checkpoint yourself and pass its local directory"
        ) from None
    log.warning("%r is not a local directory; fetching it from the Hugging Face hub", repo_id)
    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"cannot fetch {repo_id!r} from the hub ({type(err).__name__}); download it elsewhere "
            "and pass its local directory with --model"
        ) from err


def read_config(directory: str | os.PathLike[str] | None = None) -> tuple[ModelConfig, FamilySpec]:
    """Parse a checkpoint directory's config without loading weights."""
    d = _resolve_directory(directory)
    raw = _read_json(d / "config.json", required=True)
    family = family_for_model_type(raw.get("model_type"))
    gen = _read_json(d / "generation_config.json", required=False)
    try:
        config = family.parse_config(raw, gen)
    except (TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{d / 'config.json'}: {err}") from err
    return config, family


def _shard_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index, required=True).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(name, str) and name for name in weight_map.values()):
            raise CheckpointError(f"{index} has no 'weight_map' of tensor names to file names; "
                                  "the index file is malformed")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{directory} is missing shard(s) {', '.join(missing)}")
        return files
    raise CheckpointError(
        f"{directory} has no model.safetensors or model.safetensors.index.json; "
        "only safetensors checkpoints are supported"
    )


def _read_tensors(files: list[Path], key_map: dict[str, str], model: Transformer,
                  device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    expected = {name: p.shape for name, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read {file}: {err}") from err
        with handle:
            for key in handle.keys():
                ours = key_map.get(key)
                if ours is None:
                    unexpected.append(key)
                    continue
                tensor = handle.get_tensor(key)
                if tuple(tensor.shape) != tuple(expected[ours]):
                    raise CheckpointError(
                        f"tensor {key} has shape {tuple(tensor.shape)} but config.json implies "
                        f"{tuple(expected[ours])}; the config does not match the weights"
                    )
                state[ours] = tensor.to(device=device, dtype=dtype)
                check_finite_weights(key, state[ours], file)
    if unexpected:
        raise CheckpointError(
            f"checkpoint has {len(unexpected)} tensor(s) this model does not use, e.g. "
            f"{unexpected[0]!r}; is model_type right?"
        )
    missing = sorted(set(expected) - set(state))
    if model.config.tie_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        inverse = {v: k for k, v in key_map.items()}
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} tensor(s), e.g. {inverse.get(missing[0], missing[0])!r}"
        )
    return state


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Transformer:
    """Build the transformer from a checkpoint directory (weights only, no tokenizer)."""
    directory = _resolve_directory(path)
    config, family = read_config(directory)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.device("meta"):
        model = Transformer(config)
    state = _read_tensors(_shard_files(directory), family.key_map(config), model, dev, dt)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
        model.load_state_dict(state, strict=False, assign=True)
        model.lm_head.weight = model.embed.weight
    else:
        model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    model.source = str(directory)
    return model


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer | None:
    """The checkpoint's tokenizer, the byte tokenizer for byte-level models, or None."""
    directory = _resolve_directory(path)
    raw = _read_json(directory / "config.json", required=True)
    config, _ = read_config(directory)
    if raw.get("adllm_tokenizer") == "bytes":
        return ByteTokenizer()
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer(directory, mask_id=config.mask_id, eos_id=config.eos_id,
                           pad_id=config.pad_id, bos_id=config.bos_id)
    return None


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    download: bool = False,
) -> tuple[Transformer, Tokenizer | None]:
    """Load a model and its tokenizer.

    Args:
        path: local checkpoint directory, or the name of a bundled model: ``"tiny"`` (the small
            Shakespeare model, also what None loads) or ``"retrieval"`` (the long-context
            retrieval model). An existing local directory of the same name takes precedence.
        device: default CUDA when available, else CPU.
        dtype: default bfloat16 on GPU, float32 on CPU.
        download: when ``path`` is not a local directory but a hub id ("org/name"), fetch it
            from the Hugging Face hub (needs ``huggingface_hub``). Off by default: nothing is
            ever downloaded unless asked for (a real model is many gigabytes).

    Returns:
        (model, tokenizer); the tokenizer is None when the directory has no tokenizer files,
        and generation then takes token ids.

    Raises:
        CheckpointError: missing directory, missing/malformed config.json, unknown model_type,
            missing or unexpected tensor, shape mismatch, non-finite weights.
    """
    directory = _resolve_directory(path, download=download)
    return load_model(directory, device=device, dtype=dtype), load_tokenizer(directory)


def save_checkpoint(model: Transformer, directory: str | os.PathLike[str],
                    config_json: dict[str, Any]) -> None:
    """Write ``model`` under its family's public tensor names, with ``config_json``, atomically."""
    from safetensors.torch import save_file

    family = get_family(model.config.family)
    inverse = {ours: theirs for theirs, ours in family.key_map(model.config).items()}
    params = dict(model.named_parameters())
    tensors = {inverse[name]: p.detach().to("cpu").contiguous() for name, p in params.items()
               if name in inverse}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config_text = dumps_json(config_json, indent=1, sort_keys=True) + "\n"  # fails before a write
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text(out / "config.json", config_text)
