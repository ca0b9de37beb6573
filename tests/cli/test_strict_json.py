"""Every command with --json prints strict JSON: a parser that rejects NaN and Infinity reads
it, also in the cases that used to print NaN (one seed, one passage, no prompts)."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main


def reject(name: str):
    raise ValueError(f"not strict JSON: {name}")


def strict(text: str):
    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def imp_file(tmp_path_factory):
    from adaptive_dllm.importance.artifact import HeadImportance
    from adaptive_dllm.models.checkpoints import read_config

    config, _ = read_config()
    path = tmp_path_factory.mktemp("json") / "imp.safetensors"
    scores = torch.rand(config.n_layers, config.n_heads, generator=torch.Generator().manual_seed(0))
    HeadImportance(scores, "query", {"estimator": "random"}).save(path)
    return path


BENCH = ["bench", "--tiny", "--device", "cpu", "--what", "kernel", "--family", "llada",
         "--lengths", "256", "--repeats", "1", "--modes", "uniform", "--json", "--quiet"]
COMMANDS = {
    "generate": ["generate", "31 64 68 121", "--ids", "--model", "{fixtures}/llada_tiny",
                 "--gen-length", "8", "--steps", "8", "--json"],
    "budget": ["budget", "--shape", "4x4", "--synthetic", "lognormal", "--blocks", "8", "--json"],
    "prune --seeds 1": ["prune", "--importance", "{imp}", "--which", "random", "--seeds", "1",
                        "--length", "64", "--max-passages", "2", "--mask-ratios", "0.5",
                        "--json", "--quiet"],
    "eval nll --max-passages 1": ["eval", "nll", "--length", "64", "--max-passages", "1",
                                  "--json", "--quiet"],
    "eval fidelity --prompts 0": ["eval", "fidelity", "--prompts", "0", "--passages", "1",
                                  "--length", "64", "--select", "0.5", "--modes",
                                  "dense,uniform", "--block-size", "32", "--json", "--quiet"],
    "bench": BENCH,
    "importance show": ["importance", "show", "{imp}", "--json"],
    "importance compare": ["importance", "compare", "{imp}", "{imp}", "--json"],
    "importance estimate": ["importance", "estimate", "--method", "random", "--out",
                            "{tmp}/est.safetensors", "--json"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_json_output_is_strict(name, capsys, imp_file, tmp_path, fixtures_dir):
    argv = [a.format(imp=imp_file, tmp=tmp_path, fixtures=fixtures_dir) for a in COMMANDS[name]]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    record = strict(out)  # the whole of stdout is one JSON document
    assert isinstance(record, dict)
    if name == "bench":
        records = record["records"]
        assert records and all(r["kind"] in ("kernel", "skipped", "error") for r in records)
        return
    if name == "prune --seeds 1":
        row = record["summary"]["nll_mean"]
        assert row["random_std"] is None and "one random seed" in row["random_std_reason"]
    if name.startswith("eval nll"):
        assert all(r["stderr"] is None and "one passage" in r["stderr_reason"]
                   for r in record["results"])
    if name.startswith("eval fidelity"):
        nll = record["rows"][0]["nll"][0]
        assert nll["stderr"] is None and "one passage" in nll["stderr_reason"]
        assert record["rows"][0]["token_agreement"] is None  # no prompts: no generation
