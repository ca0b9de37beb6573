"""Model families as data: how a checkpoint's config.json and tensor names map to our model.

Adding a family means one :class:`FamilySpec` (a config parser and a key map) and a test, never a
modeling file. LLaDA and Dream differ only in values: GQA, q/k/v bias, rope theta, norm eps,
tied embeddings, special token ids, and Dream's one-position logit shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from adaptive_dllm.errors import CheckpointError
from adaptive_dllm.models.config import ModelConfig

Sampler = Literal["llada", "dream"]


@dataclass(frozen=True)
class FamilySpec:
    """Everything that distinguishes one model family from another.

    Attributes:
        name: family name stored in ``ModelConfig.family``.
        model_types: ``config.json`` ``model_type`` values of this family.
        parse_config: config.json dict (+ generation_config.json dict) -> ModelConfig.
        key_map: ModelConfig -> {checkpoint tensor name: our parameter name}.
        logit_shift: True when the output at position i-1 predicts token i (Dream, AR-initialised).
        sampler: the denoising loop the family was trained for.
    """

    name: str
    model_types: tuple[str, ...]
    parse_config: Callable[[dict[str, Any], dict[str, Any]], ModelConfig]
    key_map: Callable[[ModelConfig], dict[str, str]]
    logit_shift: bool
    sampler: Sampler

    def align_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, L, V) logits -> row i scores token i (Dream: row i takes model row i-1, row 0 kept)."""
        if not self.logit_shift:
            return logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _require(cfg: dict[str, Any], key: str, source: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise CheckpointError(f"{source} has no {key!r}; the checkpoint config is incomplete")
    return cfg[key]


def _check(cfg: dict[str, Any], key: str, allowed: tuple[Any, ...], default: Any) -> None:
    value = cfg.get(key, default)
    if value not in allowed:
        raise CheckpointError(
            f"config.json {key}={value!r} is not supported (supported: {allowed})"
        )


def _parse_llada(cfg: dict[str, Any], gen: dict[str, Any]) -> ModelConfig:
    src = "config.json"
    _check(cfg, "block_type", ("llama",), "llama")
    _check(cfg, "activation_type", ("silu", "swiglu"), "silu")
    _check(cfg, "layer_norm_type", ("rms",), "rms")
    _check(cfg, "rope", (True,), True)
    _check(cfg, "alibi", (False,), False)
    _check(cfg, "block_group_size", (1,), 1)
    d_model = _require(cfg, "d_model", src)
    n_heads = _require(cfg, "n_heads", src)
    n_kv = cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else n_heads)
    hidden = cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d_model
    vocab = cfg.get("embedding_size") or _require(cfg, "vocab_size", src)
    qkv_bias = bool(cfg.get("include_qkv_bias") or cfg.get("include_bias"))
    return ModelConfig(
        family="llada",
        vocab_size=vocab,
        hidden_size=d_model,
        n_layers=_require(cfg, "n_layers", src),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        intermediate_size=hidden,
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", 1e-5))),
        qkv_bias=qkv_bias,
        tie_embeddings=bool(cfg.get("weight_tying", False)),
        max_seq_len=int(cfg.get("max_sequence_length", 4096)),
        # 126336 / 126081 are the public LLaDA-8B ids, used only when config.json omits them.
        mask_id=int(cfg.get("mask_token_id", 126336)),
        eos_id=cfg.get("eos_token_id", 126081),
        pad_id=cfg.get("pad_token_id", cfg.get("eos_token_id", 126081)),
        bos_id=cfg.get("bos_token_id"),
    )


def _llada_keys(c: ModelConfig) -> dict[str, str]:
    keys = {"model.transformer.wte.weight": "embed.weight", "model.transformer.ln_f.weight": "norm.weight"}
    if not c.tie_embeddings:
        keys["model.transformer.ff_out.weight"] = "lm_head.weight"
    parts = {
        "attn_norm.weight": "attn_norm.weight",
        "q_proj.weight": "attn.q_proj.weight",
        "k_proj.weight": "attn.k_proj.weight",
        "v_proj.weight": "attn.v_proj.weight",
        "attn_out.weight": "attn.o_proj.weight",
        "ff_norm.weight": "mlp_norm.weight",
        "ff_proj.weight": "mlp.gate_proj.weight",
        "up_proj.weight": "mlp.up_proj.weight",
        "ff_out.weight": "mlp.down_proj.weight",
    }
    if c.qkv_bias:
        parts.update({f"{p}_proj.bias": f"attn.{p}_proj.bias" for p in "qkv"})
    for i in range(c.n_layers):
        for theirs, ours in parts.items():
            keys[f"model.transformer.blocks.{i}.{theirs}"] = f"layers.{i}.{ours}"
    return keys


def _parse_dream(cfg: dict[str, Any], gen: dict[str, Any]) -> ModelConfig:
    src = "config.json"
    _check(cfg, "hidden_act", ("silu",), "silu")
    if cfg.get("rope_scaling"):
        raise CheckpointError(f"config.json rope_scaling={cfg['rope_scaling']!r} is not supported")
    merged = {**cfg, **{k: v for k, v in gen.items() if v is not None}}
    return ModelConfig(
        family="dream",
        vocab_size=_require(cfg, "vocab_size", src),
        hidden_size=_require(cfg, "hidden_size", src),
        n_layers=_require(cfg, "num_hidden_layers", src),
        n_heads=_require(cfg, "num_attention_heads", src),
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        intermediate_size=_require(cfg, "intermediate_size", src),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_seq_len=int(cfg.get("max_position_embeddings", 32768)),
        # 151666 / 151643 are the public Dream-v0 ids, used only when the configs omit them.
        mask_id=int(merged.get("mask_token_id", 151666)),
        eos_id=merged.get("eos_token_id", 151643),
        pad_id=merged.get("pad_token_id", 151643),
        bos_id=merged.get("bos_token_id"),
    )


def _dream_keys(c: ModelConfig) -> dict[str, str]:
    keys = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    if not c.tie_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    parts = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.o_proj.weight": "attn.o_proj.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
        "mlp.gate_proj.weight": "mlp.gate_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
    }
    for p in "qkv":
        parts[f"self_attn.{p}_proj.weight"] = f"attn.{p}_proj.weight"
        parts[f"self_attn.{p}_proj.bias"] = f"attn.{p}_proj.bias"
    for i in range(c.n_layers):
        for theirs, ours in parts.items():
            keys[f"model.layers.{i}.{theirs}"] = f"layers.{i}.{ours}"
    return keys


LLADA = FamilySpec("llada", ("llada",), _parse_llada, _llada_keys, logit_shift=False, sampler="llada")
DREAM = FamilySpec("dream", ("dream",), _parse_dream, _dream_keys, logit_shift=True, sampler="dream")
FAMILIES: dict[str, FamilySpec] = {f.name: f for f in (LLADA, DREAM)}


def get_family(name: str) -> FamilySpec:
    """Family by name (``ModelConfig.family``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise CheckpointError(
            f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}"
        ) from None


def family_for_model_type(model_type: str | None) -> FamilySpec:
    """Family for a config.json ``model_type`` (case-insensitive)."""
    wanted = model_type.lower() if isinstance(model_type, str) else ""
    for family in FAMILIES.values():
        if wanted in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise CheckpointError(
        f"unknown model_type {model_type!r} in config.json; supported: {', '.join(known)}"
    )
