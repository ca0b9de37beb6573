"""HeadImportance: provenance, atomic save/load, upstream import, validation against a model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from adaptive_dllm.budget import relative_weights
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.importance.artifact import METADATA_KEYS, SIGN
from adaptive_dllm.models.config import ModelConfig


def _config(layers: int, heads: int, kv: int, family: str = "dream") -> ModelConfig:
    return ModelConfig(family=family, vocab_size=64, hidden_size=heads * 8, n_layers=layers,
                       n_heads=heads, n_kv_heads=kv, intermediate_size=32)


def _scores(layers: int = 4, heads: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(layers, heads, generator=torch.Generator().manual_seed(seed))


def _artifact(**meta) -> HeadImportance:
    meta = {"family": "dream", "n_kv_heads": 2, "estimator": "test", "seed": 3, **meta}
    return HeadImportance(_scores(), "query", meta)


def test_metadata_is_completed_in_a_fixed_order():
    imp = _artifact(extra="kept")
    assert list(imp.metadata)[: len(METADATA_KEYS)] == list(METADATA_KEYS)
    meta = imp.metadata
    assert meta["n_layers"] == 4 and meta["n_heads"] == 8 and meta["n_kv_heads"] == 2
    assert meta["sign"] == SIGN and meta["extra"] == "kept" and meta["created"][:2] == "20"
    assert isinstance(meta["library_version"], str)
    assert imp.n_layers == 4 and imp.n_heads == 8 and imp.group_size == 4
    assert imp.scores.dtype == torch.float32


def test_scores_are_copied():
    scores = _scores()
    imp = HeadImportance(scores, "query", {})
    scores.zero_()
    assert not bool((imp.scores == 0).all())


def test_save_load_roundtrip(tmp_path):
    imp = _artifact()
    imp.scores[0, 0] = float("nan")  # a failed head is stored as it is
    path = imp.save(tmp_path / "imp.safetensors")
    loaded = HeadImportance.load(path)
    assert torch.equal(loaded.scores.nan_to_num(), imp.scores.nan_to_num())
    assert math.isnan(loaded.scores[0, 0])
    assert loaded.head_kind == "query" and loaded.metadata == imp.metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp.safetensors"]  # one file
    # The directory form finds the default file name.
    imp.save(tmp_path / "dir" / "head_importance.safetensors")
    assert HeadImportance.load(tmp_path / "dir").metadata == imp.metadata
    # The provenance header is plain JSON at the start of the file.
    assert b'"format":"adaptive_dllm.head_importance"' in path.read_bytes()[:4000]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = _artifact(seed=1).save(tmp_path / "imp.safetensors")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("adaptive_dllm.importance.artifact.os.replace", fail)
    with pytest.raises(AdllmError, match="No space left on device"):
        _artifact(seed=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["imp.safetensors"]  # no temp file left


def test_save_needs_the_safetensors_suffix(tmp_path):
    with pytest.raises(AdllmError, match=r"must end in \.safetensors"):
        _artifact().save(tmp_path / "imp.pt")


def test_load_errors(tmp_path):
    with pytest.raises(AdllmError, match="not found"):
        HeadImportance.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(AdllmError, match="cannot read importance file") as err:
        HeadImportance.load(garbage)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(AdllmError, match="is not a head-importance file"):
        HeadImportance.load(foreign)
    with pytest.raises(AdllmError, match="from_upstream"):
        HeadImportance.load(tmp_path / "head_importance.pt")


def test_load_rejects_all_nan_files(tmp_path):
    path = tmp_path / "nan.safetensors"
    header = {"format": "adaptive_dllm.head_importance", "format_version": "1",
              "head_kind": "query", "metadata": json.dumps({})}
    save_file({"scores": torch.full((2, 4), float("nan"))}, str(path), metadata=header)
    with pytest.raises(AdllmError, match="nan.safetensors: .*no finite value"):
        HeadImportance.load(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": torch.full((2, 3), float("nan"))}, "no finite value"),
        ({"scores": torch.zeros(5)}, r"shape \(layers, heads\)"),
        ({"head_kind": "key"}, "head_kind='key'"),
        ({"metadata": {"sign": "lower_is_more_important"}}, "negate them"),
        ({"metadata": {"n_layers": 5}}, "n_layers=5 contradicts"),
        ({"metadata": {"n_heads": 6}}, "n_heads=6 contradicts"),
        ({"metadata": {"n_kv_heads": 3}}, "not a multiple of n_kv_heads=3"),
        ({"metadata": {"seed": object()}}, "JSON-serialisable"),
        ({"metadata": ["not", "a", "dict"]}, "metadata must be a dict"),
    ],
)
def test_construction_errors(kwargs, message):
    args = {"scores": _scores(), "head_kind": "query", "metadata": {}, **kwargs}
    with pytest.raises(AdllmError, match=message):
        HeadImportance(**args)


# -- upstream import -------------------------------------------------------------------------
def _upstream(tmp_path, scores: torch.Tensor, string_keys: bool = False, **extra):
    layers = {(str(i) if string_keys else i): scores[i].clone() for i in range(len(scores))}
    path = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": layers,
                "metadata": {"method": "loss_gateIG", "n_samples": 50, "lr": float("inf"),
                             "t": torch.tensor([1.0, 2.0]), **extra}}, path)
    return path


@pytest.mark.parametrize("string_keys", [False, True])
def test_from_upstream_negates_explicitly(tmp_path, string_keys):
    scores = _scores(32, 32)
    path = _upstream(tmp_path, scores, string_keys)
    plain = HeadImportance.from_upstream(path, negate=False, family="llada")
    negated = HeadImportance.from_upstream(path, negate=True, family="llada")
    assert torch.equal(plain.scores, scores) and torch.equal(negated.scores, -scores)
    meta = negated.metadata
    assert meta["estimator"] == "loss_gateIG" and meta["family"] == "llada"
    assert meta["settings"]["negated_on_import"] is True
    assert meta["settings"]["upstream_metadata"]["t"] == [1.0, 2.0]
    assert meta["settings"]["upstream_metadata"]["lr"] == "inf"
    json.dumps(meta)
    # Negation reverses which heads get the larger budget.
    torch.testing.assert_close(relative_weights(negated.scores, normalize="rank"),
                               relative_weights(plain.scores, normalize="rank", invert=True))


def test_from_upstream_requires_a_sign_decision(tmp_path):
    path = _upstream(tmp_path, _scores())
    with pytest.raises(TypeError):
        HeadImportance.from_upstream(path)  # type: ignore[call-arg]


def test_from_upstream_errors(tmp_path):
    with pytest.raises(AdllmError, match="not found"):
        HeadImportance.from_upstream(tmp_path / "none.pt", negate=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a torch file")
    with pytest.raises(AdllmError, match="cannot read upstream importance file"):
        HeadImportance.from_upstream(bad, negate=True)
    torch.save({"scores": torch.zeros(2, 2)}, bad)
    with pytest.raises(AdllmError, match="no 'importance_scores' entry"):
        HeadImportance.from_upstream(bad, negate=True)
    torch.save({"importance_scores": {0: torch.zeros(4), 2: torch.zeros(4)}}, bad)
    with pytest.raises(AdllmError, match="missing"):
        HeadImportance.from_upstream(bad, negate=True)
    torch.save({"importance_scores": {0: torch.zeros(4), 1: torch.zeros(3)}}, bad)
    with pytest.raises(AdllmError, match="different head counts"):
        HeadImportance.from_upstream(bad, negate=True)
    torch.save({"importance_scores": {0: torch.full((4,), float("nan"))}}, bad)
    with pytest.raises(AdllmError, match="no finite value"):
        HeadImportance.from_upstream(bad, negate=True)


def test_from_upstream_accepts_a_stacked_tensor(tmp_path):
    path = tmp_path / "stacked.pt"
    torch.save({"importance_scores": _scores(28, 28)}, path)
    imp = HeadImportance.from_upstream(path, negate=False, family="dream", n_kv_heads=4)
    assert imp.group_size == 7 and imp.weights().shape == (28, 4)


# -- validation against a model --------------------------------------------------------------
def test_validate_for_names_both_shapes():
    imp = HeadImportance(_scores(28, 28), "query", {})
    imp.validate_for(_config(28, 28, 4))
    with pytest.raises(AdllmError, match=r"shape \(28, 28\) .* needs \(32, 32\)"):
        imp.validate_for(_config(32, 32, 32, family="llada"))


def test_validate_for_kv_scores_and_the_kv_hint():
    kv = HeadImportance(_scores(28, 4), "kv", {})
    kv.validate_for(_config(28, 28, 4))
    assert kv.metadata["n_kv_heads"] == 4 and kv.metadata["n_heads"] is None
    as_query = HeadImportance(_scores(28, 4), "query", {})
    with pytest.raises(AdllmError, match="head_kind='kv'"):
        as_query.validate_for(_config(28, 28, 4))


def test_weights_follow_the_config():
    imp = HeadImportance(_scores(28, 28), "query", {"family": "dream"})
    w = imp.weights(_config(28, 28, 4))
    assert w.shape == (28, 4) and abs(float(w.mean()) - 1) < 1e-12
    assert imp.weights(_config(28, 28, 4), gqa="query").shape == (28, 28)
    assert imp.weights(7).shape == (28, 4)
    assert imp.weights().shape == (28, 28)  # KV-head count unknown: one unit per head
    kv = HeadImportance(_scores(28, 4), "kv", {})
    assert kv.weights(_config(28, 28, 4)).shape == (28, 4)
    with pytest.raises(AdllmError, match="gqa='query'"):
        kv.weights(gqa="query")
    with pytest.raises(AdllmError, match=r"needs \(32, 32\)"):
        imp.weights(_config(32, 32, 32))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_gives_the_umask_permissions_and_leaves_no_temporary_file(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = HeadImportance(torch.ones(2, 3), "query", {}).save(tmp_path / "imp.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # was 0o600 (mkstemp's mode)
    assert [p.name for p in tmp_path.iterdir()] == ["imp.safetensors"]


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    import os

    path = HeadImportance(torch.ones(2, 3), "query", {"estimator": "old"}).save(
        tmp_path / "imp.safetensors")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(AdllmError, match="No space left"):
        HeadImportance(torch.zeros(2, 3), "query", {"estimator": "new"}).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["imp.safetensors"]


def test_unreadable_torch_files_say_so_in_one_sentence(tmp_path):
    """Found by an audit: torch's paragraph of advice was cut mid-sentence and an empty file
    said only "EOFError"; the message now says what the file may be and the CLI's spelling."""
    empty, garbage = tmp_path / "empty.pt", tmp_path / "garbage.pt"
    empty.write_bytes(b"")
    torch.save({"importance_scores": {0: torch.zeros(4)}}, garbage)
    garbage.write_bytes(garbage.read_bytes()[:40])
    for path in (empty, garbage):
        with pytest.raises(AdllmError, match="truncated, corrupt or not a torch file") as err:
            HeadImportance.from_upstream(path, negate=True)
        message = str(err.value)
        assert "--trusted" not in message and "In PyTorch" not in message and "\n" not in message
    objects = tmp_path / "objects.pt"  # whole, but more than tensors: only --trusted reads it
    torch.save({"importance_scores": {0: torch.zeros(4)}, "extra": _Opaque()}, objects)
    with pytest.raises(AdllmError, match="holds objects beyond tensors.*pass --trusted") as err:
        HeadImportance.from_upstream(objects, negate=True)
    assert "In PyTorch" not in str(err.value) and "\n" not in str(err.value)
    assert HeadImportance.from_upstream(objects, negate=True, trusted=True).n_layers == 1


class _Opaque:
    """A pickled object that torch.load(weights_only=True) refuses."""


def test_loading_an_upstream_file_names_the_cli_import_command(tmp_path):
    path = tmp_path / "heads.pt"
    torch.save({"importance_scores": {0: torch.zeros(4)}}, path)
    with pytest.raises(AdllmError, match=r"adllm importance import .*heads.pt --negate"):
        HeadImportance.load(path)
