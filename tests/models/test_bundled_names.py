"""Bundled models by name: ``load("retrieval")`` / ``--model retrieval`` and ``"tiny"``, how a
name and a local directory of the same name are told apart, and what ships in the package."""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptive_dllm.cli import main
from adaptive_dllm.errors import CheckpointError
from adaptive_dllm.models import Transformer, checkpoints, load, read_config
from adaptive_dllm.models.checkpoints import BUNDLED_DIR, BUNDLED_MODELS
from adaptive_dllm.models.tokenizer import ByteTokenizer

RETRIEVAL = BUNDLED_MODELS["retrieval"]
MAX_BYTES = 10_000_000  # issue #13: at most 10 MB in the package
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_retrieval_files_are_complete_and_within_the_package_limit():
    names = {p.name for p in RETRIEVAL.iterdir()}
    assert {"config.json", "model.safetensors", "MODEL_CARD.md"} <= names
    assert (RETRIEVAL / "model.safetensors").stat().st_size <= MAX_BYTES
    config = json.loads((RETRIEVAL / "config.json").read_text())
    assert config["model_type"] == "llada" and config["adllm_tokenizer"] == "bytes"


def test_load_retrieval_by_name_matches_its_config_file():
    model, tok = load("retrieval", device="cpu")
    assert isinstance(model, Transformer) and isinstance(tok, ByteTokenizer)
    assert Path(model.source) == RETRIEVAL
    raw = json.loads((RETRIEVAL / "config.json").read_text())
    c = model.config
    assert (c.family, c.hidden_size, c.n_layers, c.n_heads, c.n_kv_heads, c.intermediate_size,
            c.max_seq_len, c.rope_theta, c.vocab_size) == (
        "llada", raw["d_model"], raw["n_layers"], raw["n_heads"], raw["n_kv_heads"],
        raw["mlp_hidden_size"], raw["max_sequence_length"], raw["rope_theta"],
        raw["embedding_size"])
    assert (c.mask_id, c.eos_id) == (raw["mask_token_id"], raw["eos_token_id"])
    assert (c.mask_id, c.eos_id) == (tok.mask_id, tok.eos_id)
    assert c.max_seq_len > read_config()[0].max_seq_len  # the long-context one, not tiny
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([tok.encode("The pass key is 48213. Remember it.")])
    logits = model(ids)
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()


def test_none_and_tiny_name_the_shakespeare_model(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no local directory called "tiny"
    assert checkpoints._resolve_directory(None) == BUNDLED_DIR == BUNDLED_MODELS["tiny"]
    assert checkpoints._resolve_directory("tiny") == BUNDLED_DIR
    assert checkpoints._resolve_directory("retrieval") == RETRIEVAL != BUNDLED_DIR
    assert read_config("tiny")[0] == read_config()[0]


def test_a_local_directory_of_the_same_name_wins_and_says_so(monkeypatch, tmp_path, fixtures_dir,
                                                              caplog):
    shutil.copytree(fixtures_dir / "llada_tiny", tmp_path / "retrieval")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="adaptive_dllm.models.checkpoints"):
        config, _ = read_config("retrieval")
    assert config.n_kv_heads == 4  # the fixture's config, not the bundled model's 2
    assert "not the bundled model 'retrieval'" in caplog.text
    caplog.clear()
    assert checkpoints._resolve_directory("./retrieval") == Path("./retrieval")
    assert caplog.text == ""  # an explicit path: no warning


def test_paths_are_never_bundled_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing here
    for path in (Path("retrieval"), "./retrieval", "sub/retrieval", str(tmp_path / "tiny")):
        with pytest.raises(CheckpointError, match="does not exist and is not a bundled model"):
            read_config(path)


@pytest.mark.parametrize("name", ["retreival", "Retrieval", "shakespeare", "llada-8b"])
def test_unknown_names_are_a_one_line_error_naming_the_bundled_ones(monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load(name, device="cpu")
    message = str(info.value)
    assert f"{name!r} does not exist" in message and "(tiny, retrieval)" in message
    assert "\n" not in message


def test_cli_unknown_model_name_exits_2_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "x", "--model", "retreival", "--gen-length", "8", "--steps", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "'retreival'" in err and "(tiny, retrieval)" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_generate_resolves_the_retrieval_name(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "The pass key is 48213. Remember it. The pass key is", "--model",
                 "retrieval", "--gen-length", "8", "--steps", "8", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert len(data["ids"]) == 8 and data["stats"]["prompt_length"] == 51  # bytes: one per token


def test_a_named_bundled_model_is_checked_for_non_finite_weights(monkeypatch, tmp_path):
    poisoned = tmp_path / "copy"
    shutil.copytree(RETRIEVAL, poisoned)
    tensors = load_file(poisoned / "model.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[5] = float("nan")
    save_file(tensors, poisoned / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(checkpoints, "BUNDLED_MODELS", {**BUNDLED_MODELS, "retrieval": poisoned})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"tensor {key} in .* holds 1 of .* non-finite"):
        load("retrieval", device="cpu")


def test_the_package_data_ships_every_bundled_file():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = meta["tool"]["setuptools"]["package-data"]["adaptive_dllm"]
    package = REPO_ROOT / "src" / "adaptive_dllm"
    for name, directory in BUNDLED_MODELS.items():
        for file in ("config.json", "model.safetensors", "MODEL_CARD.md"):
            relative = (directory / file).relative_to(package).as_posix()
            assert any(fnmatch.fnmatch(relative, p) for p in patterns), (name, relative)


def test_records_name_bundled_files_the_same_on_every_installation(tmp_path):
    assert checkpoints.record_path(BUNDLED_DIR) == "bundled:tiny"
    assert checkpoints.record_path(RETRIEVAL / "config.json") == "bundled:retrieval/config.json"
    assert checkpoints.record_path(str(BUNDLED_DIR / "heldout.txt")) == "bundled:tiny/heldout.txt"
    other = tmp_path / "tiny"  # a directory of the same name elsewhere is just a path
    assert checkpoints.record_path(other) == str(other)
    assert checkpoints.record_path(None) is None
