"""The shared transformer: padding, gates, GQA, invariances."""

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models import ModelConfig, Transformer, load_model


def tiny(n_kv_heads=2, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(family="llada", vocab_size=50, hidden_size=32, n_layers=2, n_heads=4,
                      n_kv_heads=n_kv_heads, intermediate_size=64, max_seq_len=64, mask_id=49, **kw)
    model = Transformer(cfg)
    for p in model.parameters():  # break the ones-init of norms so nothing is trivially symmetric
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["llada_tiny", "dream_tiny"])
def test_left_padding_equals_unpadded(fixtures_dir, name):
    model = load_model(fixtures_dir / name, device="cpu")
    ids = torch.randint(0, 100, (1, 10))
    alone = model(ids)
    pad = 3
    padded = torch.cat([torch.full((1, pad), 7), ids], dim=1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 10, dtype=torch.bool)], 1)
    out = model(padded, attention_mask=mask)
    torch.testing.assert_close(out[:, pad:], alone, atol=1e-5, rtol=1e-5)
    # Pad content never influences real positions.
    padded2 = padded.clone()
    padded2[:, :pad] = 42
    torch.testing.assert_close(model(padded2, attention_mask=mask)[:, pad:], out[:, pad:])


def test_batch_equals_one_by_one():
    model = tiny()
    a, b = torch.randint(0, 49, (1, 12)), torch.randint(0, 49, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    out = model(batch, attention_mask=mask)
    torch.testing.assert_close(out[0:1], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2, 5:], model(b), atol=1e-5, rtol=1e-5)


def test_no_causal_mask():
    model = tiny()
    ids = torch.randint(0, 49, (1, 10))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 49
    # A later token changes the logits of the first position: attention is bidirectional.
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_gates_of_one_are_exact_and_zero_gate_changes_output():
    model = tiny()
    ids = torch.randint(0, 49, (2, 9))
    ones = torch.ones(2, 4)
    assert torch.equal(model(ids, head_gates=ones), model(ids))
    gates = ones.clone()
    gates[1, 2] = 0.0
    assert not torch.allclose(model(ids, head_gates=gates), model(ids))


def test_gates_are_differentiable():
    model = tiny()
    gates = torch.ones(2, 4, requires_grad=True)
    model(torch.randint(0, 49, (1, 6)), head_gates=gates).sum().backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0


def test_gradient_checkpointing_same_gradients():
    model = tiny()
    ids = torch.randint(0, 49, (1, 6))
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        gates = torch.ones(2, 4, requires_grad=True)
        model(ids, head_gates=gates).square().mean().backward()
        grads.append(gates.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_gqa_equals_repeated_mha():
    gqa = tiny(n_kv_heads=2)
    cfg = ModelConfig(**{**gqa.config.__dict__, "n_kv_heads": 4})
    mha = Transformer(cfg).eval()
    state = gqa.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = state[f"layers.{i}.attn.{name}.weight"].view(2, 8, 32)
            state[f"layers.{i}.attn.{name}.weight"] = w.repeat_interleave(2, 0).reshape(32, 32)
    mha.load_state_dict(state)
    ids = torch.randint(0, 49, (2, 11))
    torch.testing.assert_close(mha(ids), gqa(ids), atol=1e-5, rtol=1e-5)


def test_reference_backend_matches_sdpa():
    from adaptive_dllm.attention import attend

    q = torch.randn(2, 4, 10, 8)
    k, v = torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    torch.testing.assert_close(attend(q, k, v, key_mask=mask, backend="reference"),
                               attend(q, k, v, key_mask=mask), atol=1e-5, rtol=1e-5)


def test_sequence_too_long():
    with pytest.raises(AdllmError, match="exceeds the model maximum of 64"):
        tiny()(torch.zeros(1, 65, dtype=torch.long))


def test_bad_head_gates_shape():
    with pytest.raises(AdllmError, match="head_gates shape"):
        tiny()(torch.zeros(1, 4, dtype=torch.long), head_gates=torch.ones(3, 4))


@pytest.mark.parametrize("kw, match", [
    ({"n_heads": 3}, "not a multiple"),
    ({"hidden_size": 30, "n_heads": 4, "n_kv_heads": 4}, "not divisible"),
    ({"mask_id": 99}, "outside the vocabulary"),
    ({"n_layers": 0}, "positive integer"),
])
def test_config_validation(kw, match):
    base = dict(family="llada", vocab_size=50, hidden_size=32, n_layers=2, n_heads=4,
                n_kv_heads=2, intermediate_size=64, mask_id=1)
    with pytest.raises(AdllmError, match=match):
        ModelConfig(**{**base, **kw})


def test_logits_from_skips_the_head_before_it():
    model = tiny()
    ids = torch.randint(0, 49, (2, 9))
    torch.testing.assert_close(model(ids, logits_from=4), model(ids)[:, 4:])
