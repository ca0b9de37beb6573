"""Families are data: key maps cover every parameter, save/load round-trips, Dream's shift."""

import pytest
import torch

from adaptive_dllm.errors import CheckpointError
from adaptive_dllm.models import ModelConfig, Transformer, get_family, load_model
from adaptive_dllm.models.checkpoints import save_checkpoint
from adaptive_dllm.models.families import family_for_model_type


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("tie", [False, True])
def test_key_map_covers_every_parameter(family, tie):
    cfg = ModelConfig(family=family, vocab_size=40, hidden_size=16, n_layers=3, n_heads=4, n_kv_heads=2,
                      intermediate_size=32, mask_id=39, tie_embeddings=tie, qkv_bias=family == "dream")
    model = Transformer(cfg)
    mapped = set(get_family(family).key_map(cfg).values())
    params = {n for n, _ in model.named_parameters()}  # tied lm_head is not a separate parameter
    assert mapped == params


def test_llada_save_load_roundtrip_with_tied_embeddings(tmp_path):
    config_json = {"model_type": "llada", "d_model": 16, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
                   "mlp_hidden_size": 32, "vocab_size": 40, "embedding_size": 40, "weight_tying": True,
                   "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 64,
                   "mask_token_id": 39, "eos_token_id": 38, "pad_token_id": 38}
    from adaptive_dllm.models.families import LLADA

    cfg = LLADA.parse_config(config_json, {})
    torch.manual_seed(0)
    model = Transformer(cfg)
    save_checkpoint(model, tmp_path, config_json)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.lm_head.weight is loaded.embed.weight
    ids = torch.randint(0, 38, (2, 9))
    torch.testing.assert_close(loaded(ids), model(ids))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    # A config that cannot be written fails before either file is replaced.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        model.embed.weight.zero_()
    with pytest.raises(TypeError):
        save_checkpoint(model, tmp_path, {**config_json, "bad": object()})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_dream_logit_shift():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    shifted = get_family("dream").align_logits(logits)
    assert torch.equal(shifted[:, 0], logits[:, 0])
    assert torch.equal(shifted[:, 1:], logits[:, :-1])
    assert get_family("llada").align_logits(logits) is logits


def test_model_type_is_case_insensitive_and_unknown_is_an_error():
    assert family_for_model_type("Dream").name == "dream"
    assert family_for_model_type("LLaDA").name == "llada"
    with pytest.raises(CheckpointError, match="supported"):
        family_for_model_type(None)


def test_unsupported_llada_block_type():
    from adaptive_dllm.models.families import LLADA

    with pytest.raises(CheckpointError, match="block_type"):
        LLADA.parse_config({"block_type": "sequential", "d_model": 8, "n_heads": 2, "n_layers": 1,
                            "vocab_size": 8}, {})
