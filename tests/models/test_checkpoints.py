"""Loading the recorded upstream checkpoints and rejecting broken ones."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptive_dllm.errors import CheckpointError
from adaptive_dllm.models import load, load_model, read_config

FAMILIES = ["llada_tiny", "dream_tiny"]


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_upstream(fixtures_dir, name):
    model, tok = load(fixtures_dir / name, device="cpu")
    assert tok is None  # fixture dirs ship no tokenizer files
    recorded = load_file(fixtures_dir / name / "outputs.safetensors")
    cases = sorted({k.split(".")[1] for k in recorded if k.startswith("forward.")})
    assert cases
    for case in cases:
        ids = recorded[f"forward.{case}.input_ids"]
        with torch.no_grad():
            logits = model(ids)
        expected = recorded[f"forward.{case}.logits"]
        assert logits.dtype == torch.float32
        assert (logits - expected).abs().max().item() <= 1e-4, case


def test_config_values_come_from_config_json(fixtures_dir):
    llada, _ = read_config(fixtures_dir / "llada_tiny")
    dream, _ = read_config(fixtures_dir / "dream_tiny")
    assert (llada.family, llada.mask_id, llada.eos_id, llada.n_kv_heads) == ("llada", 126, 125, 4)
    assert (dream.family, dream.mask_id, dream.eos_id, dream.n_kv_heads) == ("dream", 150, 148, 2)
    assert dream.qkv_bias and not llada.qkv_bias
    assert llada.rope_theta == 500000.0 and dream.rope_theta == 1000000.0
    assert llada.norm_eps == 1e-5 and dream.norm_eps == 1e-6


@pytest.fixture
def broken(tmp_path, fixtures_dir):
    def make(name="llada_tiny"):
        target = tmp_path / name
        shutil.copytree(fixtures_dir / name, target)
        for p in target.iterdir():
            p.chmod(0o644)
        return target

    return make


def test_missing_directory():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("/nonexistent/model/dir")


def test_missing_config(broken):
    d = broken()
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(d)


def test_malformed_config(broken):
    d = broken()
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(d)


def test_unknown_model_type(broken):
    d = broken()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt2'"):
        load_model(d)


def test_missing_tensor(broken):
    d = broken("dream_tiny")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks 1 tensor"):
        load_model(d)


def test_unexpected_tensor(broken):
    d = broken()
    tensors = load_file(d / "model.safetensors")
    tensors["model.transformer.extra.weight"] = torch.zeros(2)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not use"):
        load_model(d)


def test_shape_mismatch(broken):
    d = broken()
    cfg = json.loads((d / "config.json").read_text())
    cfg["mlp_hidden_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(d)


def test_sharded_checkpoint_loads_identically(broken, fixtures_dir):
    d = broken("dream_tiny")
    tensors = load_file(d / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, d / shard)
        weight_map.update({k: shard for k in keys})
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a = load_model(d, device="cpu")
    b = load_model(fixtures_dir / "dream_tiny", device="cpu")
    ids = torch.randint(0, 150, (1, 12))
    assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("weight_map", [{"x": 5}, {"x": None}, {"x": ""}, ["x"]])
def test_malformed_weight_map(broken, weight_map):
    """Found by an audit: a file name that is no string was a TypeError traceback."""
    d = broken()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="index file is malformed"):
        load_model(d)


@pytest.mark.parametrize("model_type", [["llada"], 5, None])
def test_model_type_that_is_no_string(broken, model_type):
    d = broken()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model_type"):
        load_model(d)


def test_missing_shard(broken):
    d = broken()
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
    )
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        load_model(d)


def test_hub_id_offline_gives_one_line_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(CheckpointError, match="needs huggingface_hub") as info:
        load("GSAI-ML/LLaDA-8B-Instruct", download=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("api", ["load", "load_model"])
def test_hub_id_is_never_fetched_without_download(monkeypatch, api):
    import adaptive_dllm.models.checkpoints as ckpt

    def fetch(repo_id):  # noqa: ANN001
        raise AssertionError(f"tried to download {repo_id}")

    monkeypatch.setattr(ckpt, "_download_from_hub", fetch)
    with pytest.raises(CheckpointError) as info:
        getattr(ckpt, api)("GSAI-ML/LLaDA-8B-Instruct")
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message
    assert "--download" in message and "download=True" in message


def test_hub_id_is_fetched_with_download(monkeypatch, tmp_path):
    import adaptive_dllm.models.checkpoints as ckpt

    fetched = []
    monkeypatch.setattr(ckpt, "_download_from_hub", lambda repo: fetched.append(repo) or tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):  # the stand-in directory is empty
        ckpt.load("org/model", download=True)
    assert fetched == ["org/model"]


def test_bf16_load(fixtures_dir):
    model = load_model(fixtures_dir / "llada_tiny", device="cpu", dtype="bf16")
    assert model.embed.weight.dtype == torch.bfloat16
    logits = model(torch.randint(0, 120, (1, 8)))
    assert logits.dtype == torch.bfloat16


@pytest.mark.parametrize("device, match", [("tpu", "unknown device|not supported"),
                                           ("cuda:7", "CUDA|does not exist"),
                                           ("mps", "no usable MPS")])
def test_bad_device_is_a_one_line_error(fixtures_dir, device, match):
    from adaptive_dllm.errors import AdllmError

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(AdllmError, match=match) as info:
        load_model(fixtures_dir / "llada_tiny", device=device)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("poison", ["all_nan", "one_inf"])
def test_non_finite_weights_are_refused_at_load(broken, name, poison):
    d = broken(name)
    tensors = load_file(d / "model.safetensors")
    key = sorted(tensors)[-1]
    if poison == "all_nan":
        tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    else:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = float("inf")
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="non-finite values") as info:
        load(d, device="cpu")
    assert "\n" not in str(info.value)
    if poison == "one_inf":
        assert f"{key} in" in str(info.value) and "holds 1 of" in str(info.value)


def test_bundled_model_weights_are_finite():
    from adaptive_dllm.models.checks import check_finite_weights

    model = load_model(device="cpu")
    for name, param in model.named_parameters():
        check_finite_weights(name, param, "bundled")  # raises on a NaN or Inf
