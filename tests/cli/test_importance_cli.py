"""`adllm importance estimate | show | compare | import` on a tiny byte-level checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.models.checkpoints import save_checkpoint
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.transformer import Transformer

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; "
        "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ") * 4


def byte_checkpoint(directory):
    """A 2-layer byte-level model (4 query / 2 KV heads) with the byte tokenizer marker."""
    config_json = {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
        "mlp_hidden_size": 48, "vocab_size": 258, "embedding_size": 264, "rope_theta": 10000.0,
        "max_sequence_length": 128, "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256,
        "adllm_tokenizer": "bytes",
    }
    torch.manual_seed(0)
    model = Transformer(get_family("llada").parse_config(config_json, {}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_checkpoint(model, directory, config_json)
    (directory / "heldout.txt").write_text(TEXT)
    return directory


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return byte_checkpoint(tmp_path_factory.mktemp("byte_model"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "richard.txt"
    path.write_text(TEXT)
    return path


def _run(capsys, *argv):
    code = main(["importance", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("adllm importance: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_estimate_headig_prints_cost_and_writes_the_artifact(ckpt, text_file, tmp_path, capsys):
    out_file = tmp_path / "hig.safetensors"
    code, out, err = _run(capsys, "estimate", "--method", "headig", "--model", str(ckpt), "--data",
                          str(text_file), "--text-length", "32", "--n", "2", "--steps", "2",
                          "--path-samples", "2", "--mask-ratios", "0.5", "--mask-samples", "1",
                          "--device", "cpu", "--seed", "7", "--out", str(out_file))
    assert code == 0, err
    assert "1 x S 1 x K 2 x P 2 = 4 forward+backward passes per example" in out
    assert "completeness" in out and f"wrote {out_file}" in out
    imp = HeadImportance.load(out_file)
    assert imp.scores.shape == (2, 4) and imp.metadata["estimator"] == "headig"
    assert imp.metadata["seed"] == 7 and imp.metadata["data"]["n"] == 2
    assert imp.metadata["data"]["length"] == 32


@pytest.mark.parametrize("method", ["entropy", "coverage", "uniform", "random"])
def test_estimate_cheap_methods(ckpt, text_file, tmp_path, capsys, method):
    out_file = tmp_path / f"{method}.safetensors"
    data = ([] if method in ("uniform", "random") else
            ["--data", str(text_file), "--text-length", "64", "--block-size", "16"])
    code, out, err = _run(capsys, "estimate", "--method", method, "--model", str(ckpt), *data,
                          "--device", "cpu", "--out", str(out_file), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["metadata"]["estimator"] == method and record["path"] == str(out_file)
    assert HeadImportance.load(out_file).scores.shape == (2, 4)


def test_entropy_is_the_default_method(ckpt, text_file, tmp_path, capsys):
    # The default follows the retrieval study (docs/fidelity.md): entropy with global budgets.
    out_file = tmp_path / "default.safetensors"
    code, out, err = _run(capsys, "estimate", "--model", str(ckpt), "--data", str(text_file),
                          "--text-length", "64", "--block-size", "16", "--device", "cpu",
                          "--out", str(out_file), "--json")
    assert code == 0, err
    assert json.loads(out)["metadata"]["estimator"] == "entropy"


@pytest.mark.parametrize("method, argv, named", [
    ("headig", ["--block-size", "16", "--coverage", "0.8"], "--block-size, --coverage"),
    ("entropy", ["--steps", "4"], "--steps"),
    ("uniform", ["--data", "x.txt"], "--data"),
    ("entropy", ["--distribution", "normal"], "--distribution"),
    ("entropy", ["--coverage", "0.5", "--top-frac", "0.2"], "--top-frac, --coverage"),
    ("coverage", ["--select", "0.5"], "--select"),
])
def test_options_a_method_ignores_are_refused(ckpt, tmp_path, capsys, method, argv, named):
    """Found by an audit: e.g. --block-size under --method headig was silently ignored."""
    err = _error(capsys, "estimate", "--method", method, "--model", str(ckpt), *argv,
                 "--out", str(tmp_path / "x.safetensors"))
    assert err.startswith(f"adllm importance: error: {named}: not used by --method {method}")
    assert not (tmp_path / "x.safetensors").exists()


def test_show_summary_plot_and_json(tmp_path, capsys):
    scores = torch.arange(8.0).view(2, 4) - 3
    imp = HeadImportance(scores, "query", {"estimator": "headig", "seed": 1})
    path = imp.save(tmp_path / "a.safetensors")
    code, out, _ = _run(capsys, "show", str(path), "--top", "2", "--plot", str(tmp_path / "h.png"))
    assert code == 0
    assert "top 2: L1H3 4, L1H2 3" in out and "bottom 2: L0H0 -3, L0H1 -2" in out
    assert "(4 positive, 3 negative, 0 NaN)" in out
    inf = HeadImportance(scores.masked_fill(scores == 4, float("inf")), "query", {})
    code, out, _ = _run(capsys, "show", str(inf.save(tmp_path / "inf.safetensors")))
    assert "0 NaN, 1 Inf)" in out  # found by an audit: Inf was counted as NaN
    assert (tmp_path / "h.png").stat().st_size > 1000
    code, out, _ = _run(capsys, "show", str(path), "--json")
    info = json.loads(out)
    assert info["top"][0] == [1, 3, 4.0] and info["layer_means"] == [-1.5, 2.5]


def test_compare(tmp_path, capsys):
    x = torch.arange(8.0).view(2, 4)
    a = HeadImportance(x, "query", {}).save(tmp_path / "a.safetensors")
    b = HeadImportance(-x, "query", {}).save(tmp_path / "b.safetensors")
    code, out, _ = _run(capsys, "compare", str(a), str(b), "--top-k", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["spearman"] == pytest.approx(-1) and result["top_overlap"] == 0
    code, out, _ = _run(capsys, "compare", str(a), str(a))
    assert "spearman 1.000" in out and "top-2 overlap 1.00" in out


def test_import_upstream(tmp_path, capsys):
    src = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {0: torch.tensor([1.0, -2.0]), 1: torch.tensor([0.5, 3.0])},
                "metadata": {"method": "loss_gateIG"}}, src)
    out_file = tmp_path / "imp.safetensors"
    code, out, _ = _run(capsys, "import", str(src), "--negate", "--family", "llada", "--out", str(out_file))
    assert code == 0 and "negated" in out
    imp = HeadImportance.load(out_file)
    assert imp.scores.tolist() == [[-1.0, 2.0], [-0.5, -3.0]]
    assert imp.metadata["estimator"] == "loss_gateIG"
    # KV-head scores: --kv-heads must agree with their columns (it was silently ignored)
    kv_file = tmp_path / "kv.safetensors"
    code, _, _ = _run(capsys, "import", str(src), "--no-negate", "--head-kind", "kv",
                      "--kv-heads", "2", "--out", str(kv_file))
    assert code == 0 and HeadImportance.load(kv_file).metadata["n_kv_heads"] == 2
    err = _error(capsys, "import", str(src), "--no-negate", "--head-kind", "kv", "--kv-heads", "4",
                 "--out", str(tmp_path / "kv4.safetensors"))
    assert "n_kv_heads=4 contradicts" in err and "2 columns" in err
    assert not (tmp_path / "kv4.safetensors").exists()


def test_errors_are_one_line(ckpt, text_file, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert "needs calibration data" in _error(capsys, "estimate", "--method", "entropy", "--model",
                                              str(ckpt), "--out", out, "--device", "cpu")
    assert "must end in .safetensors" in _error(capsys, "estimate", "--method", "uniform",
                                                "--model", str(ckpt), "--out", str(tmp_path / "x.pt"))
    assert "--layers" in _error(capsys, "estimate", "--method", "headig", "--model", str(ckpt),
                                "--data", str(text_file), "--layers", "a:b", "--out", out)
    assert "not found" in _error(capsys, "show", str(tmp_path / "missing.safetensors"))
    assert "steps" in _error(capsys, "estimate", "--method", "headig", "--model", str(ckpt),
                             "--data", str(text_file), "--steps", "0", "--out", out)


# ---------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line, no traceback, no pre-existing file changed


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def files(tmp_path):
    """A workspace of existing files the bad commands must leave untouched."""
    x = torch.arange(8.0).view(2, 4)
    HeadImportance(x, "query", {"estimator": "a"}).save(tmp_path / "a.safetensors")
    HeadImportance(-x, "query", {"estimator": "b"}).save(tmp_path / "b.safetensors")
    HeadImportance(torch.ones(3, 4), "query", {}).save(tmp_path / "other_shape.safetensors")
    (tmp_path / "data.safetensors").write_text(TEXT)  # a text file that ends like an artifact
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    torch.save([1, 2, 3], tmp_path / "foreign.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dir.safetensors").mkdir()
    return tmp_path


HEADIG = ("estimate", "--method", "headig", "--data", "{t}/data.safetensors", "--device", "cpu",
          "--text-length", "32", "--n", "1", "--steps", "1", "--path-samples", "1",
          "--mask-samples", "1", "--mask-ratios", "0.5")

BAD_INPUTS = {
    "out is a directory": (("estimate", "--method", "uniform", "--out", "{t}/dir.safetensors"),
                           "is a directory"),
    "out parent missing": (("estimate", "--method", "random", "--out", "{t}/no/x.safetensors"),
                           "does not exist"),
    "out under a file": (("estimate", "--method", "random", "--out",
                          "{t}/a.safetensors/x.safetensors"), "not a directory"),
    "out is the data": ((*HEADIG, "--out", "{t}/data.safetensors"), "also an input"),
    "resume is the out": ((*HEADIG, "--out", "{t}/new.safetensors", "--resume",
                           "{t}/new.safetensors"), "also an input"),
    "resume and no-resume": ((*HEADIG, "--out", "{t}/new.safetensors", "--resume", "{t}/r.pt",
                              "--no-resume"), "contradict"),
    "truncated resume": ((*HEADIG, "--out", "{t}/new.safetensors", "--resume",
                          "{t}/truncated.pt"), "damaged"),
    "foreign resume": ((*HEADIG, "--out", "{t}/new.safetensors", "--resume", "{t}/foreign.pt"),
                       "not a HeadIG resume file"),
    "show plot format": (("show", "{t}/a.safetensors", "--plot", "{t}/h.txt"),
                         "'txt' file format; end the name in one of .png"),
    "show plot directory": (("show", "{t}/a.safetensors", "--plot", "{t}/dir.png"),
                            "is a directory"),
    "compare plot parent": (("compare", "{t}/a.safetensors", "{t}/b.safetensors", "--plot",
                             "{t}/no/x.png"), "does not exist"),
    "compare shapes": (("compare", "{t}/a.safetensors", "{t}/other_shape.safetensors"),
                       "cannot compare"),
    "compare corrupt": (("compare", "{t}/a.safetensors", "{t}/broken.safetensors"),
                        "cannot read"),
    "average onto input": (("average", "{t}/a.safetensors", "{t}/b.safetensors", "--out",
                            "{t}/b.safetensors"), "also an input"),
    "average one file": (("average", "{t}/a.safetensors", "--out", "{t}/m.safetensors"),
                         "at least two"),
    "average shapes": (("average", "{t}/a.safetensors", "{t}/other_shape.safetensors", "--out",
                        "{t}/m.safetensors"), "same model"),
    "average suffix": (("average", "{t}/a.safetensors", "{t}/b.safetensors", "--out",
                        "{t}/m.pt"), "must end in .safetensors"),
    "import onto directory": (("import", "{t}/foreign.pt", "--negate", "--out",
                               "{t}/dir.safetensors"), "is a directory"),
    "import foreign": (("import", "{t}/foreign.pt", "--negate", "--out", "{t}/i.safetensors"),
                       "importance_scores"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_fail_in_one_line_and_change_no_file(ckpt, files, capsys, case):
    argv, words = BAD_INPUTS[case]
    argv = [a.format(t=files) for a in argv]
    if argv[0] == "estimate":
        argv += ["--model", str(ckpt)]
    before = _snapshot(files)
    code, out, err = _run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err
    assert _snapshot(files) == before  # nothing written, nothing overwritten, no temp files


# ---------------------------------------------------------------------------------------------
# Strict JSON, average, random distributions, compare --plot


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_compare_json_is_strict_when_a_correlation_is_undefined(tmp_path, capsys):
    flat = HeadImportance(torch.ones(2, 4), "query", {}).save(tmp_path / "flat.safetensors")
    ramp = HeadImportance(torch.arange(8.0).view(2, 4), "query", {}).save(tmp_path / "r.safetensors")
    code, out, _ = _run(capsys, "compare", str(flat), str(ramp), "--json")
    assert code == 0
    result = _strict(out)  # printed NaN before
    assert result["pearson"] is None and result["spearman"] is None
    code, out, _ = _run(capsys, "compare", str(flat), str(ramp))
    assert "pearson n/a" in out


def test_compare_plot_draws_both_files_and_their_difference(files, capsys):
    from matplotlib.image import imread

    code, out, _ = _run(capsys, "compare", str(files / "a.safetensors"),
                        str(files / "b.safetensors"), "--plot", str(files / "ab.png"), "--json")
    assert code == 0 and _strict(out)["plot"] == str(files / "ab.png")
    _run(capsys, "show", str(files / "a.safetensors"), "--plot", str(files / "a.png"))
    three, one = imread(files / "ab.png"), imread(files / "a.png")
    assert three.shape[1] > 2.5 * one.shape[1]  # three panels side by side


def test_average_writes_the_mean_with_its_sources(files, capsys):
    out_file = files / "mean.safetensors"
    code, out, err = _run(capsys, "average", str(files / "a.safetensors"),
                          str(files / "b.safetensors"), "--out", str(out_file), "--json")
    assert code == 0, err
    meta = _strict(out)["metadata"]
    mean = HeadImportance.load(out_file)
    assert mean.scores.abs().max() == 0  # a and b = -a
    assert [s["file"] for s in meta["sources"]] == [str(files / "a.safetensors"),
                                                     str(files / "b.safetensors")]
    assert meta["estimator"] == "average" and meta["settings"]["mean_of"] == ["a", "b"]


@pytest.mark.parametrize(("distribution", "check"), [
    ("uniform", lambda s: bool(((s >= 0) & (s < 1)).all())),
    ("normal", lambda s: bool((s < 0).any() and (s > 0).any())),
    ("exponential", lambda s: bool((s > 0).all() and s.max() > 1)),
])
def test_random_importance_distributions(ckpt, tmp_path, capsys, distribution, check):
    out_file = tmp_path / f"{distribution}.safetensors"
    code, out, err = _run(capsys, "estimate", "--method", "random", "--distribution",
                          distribution, "--seed", "5", "--model", str(ckpt), "--out",
                          str(out_file), "--json")
    assert code == 0, err
    imp = HeadImportance.load(out_file)
    assert check(imp.scores)
    assert _strict(out)["metadata"]["settings"]["distribution"].startswith(distribution)


# ---------------------------------------------------------------------------------------------
# HeadIG: default resume file, progress, per-layer


def _headig(ckpt, text_file, out_file, *extra):
    return ("estimate", "--method", "headig", "--model", str(ckpt), "--data", str(text_file),
            "--text-length", "32", "--n", "2", "--steps", "2", "--path-samples", "1",
            "--mask-ratios", "0.5", "--mask-samples", "1", "--device", "cpu", "--out",
            str(out_file), *extra)


def test_headig_resumes_by_default_and_reports_progress(ckpt, text_file, tmp_path, capsys,
                                                        monkeypatch):
    from adaptive_dllm.importance import headig as hig

    out_file = tmp_path / "h.safetensors"
    resume = tmp_path / "h.safetensors.resume.pt"
    original, calls = hig.MaskedObjective.value, []

    def interrupt_after_first_example(self, gates):
        calls.append(1)
        if len(calls) == 3:  # two values per example: die inside the second example
            raise KeyboardInterrupt
        return original(self, gates)

    monkeypatch.setattr(hig.MaskedObjective, "value", interrupt_after_first_example)
    assert main(["importance", *_headig(ckpt, text_file, out_file)]) != 0  # "interrupted"
    assert len(torch.load(resume, weights_only=True)["ig"]) == 1 and not out_file.exists()
    capsys.readouterr()
    monkeypatch.setattr(hig.MaskedObjective, "value", original)
    code, out, err = _run(capsys, *_headig(ckpt, text_file, out_file))
    assert code == 0, err
    assert out.index("forward+backward passes") < out.index("completeness")
    assert f"partial results saved to {resume}" in out
    assert "HeadIG" in err and "100%" in err  # progress on stderr although not a terminal
    assert out_file.exists() and not resume.exists()  # the default resume file is cleaned up
    code, _, err = _run(capsys, *_headig(ckpt, text_file, tmp_path / "q.safetensors",
                                         "--quiet", "--no-resume"))
    assert code == 0 and err == ""


def test_per_layer_headig_scores_each_layer_on_its_own(ckpt, text_file, tmp_path, capsys):
    per_layer = tmp_path / "per_layer.safetensors"
    code, out, err = _run(capsys, *_headig(ckpt, text_file, per_layer, "--per-layer", "--quiet"))
    assert code == 0, err
    assert "--per-layer: 2 runs" in out and "layer 1 completeness" in out
    layer1 = tmp_path / "layer1.safetensors"
    assert _run(capsys, *_headig(ckpt, text_file, layer1, "--layers", "1", "--quiet"))[0] == 0
    both, one = HeadImportance.load(per_layer), HeadImportance.load(layer1)
    assert torch.isfinite(both.scores).all()
    assert torch.equal(both.scores[1], one.scores[1])
    assert [p["layer"] for p in both.metadata["per_layer"]] == [0, 1]
