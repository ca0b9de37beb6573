"""Bad inputs to every command: exit status 2, one line on stderr, no traceback, nothing on
stdout, and no file that existed before is changed (issue #16 acceptance).

Run in-process through ``adaptive_dllm.cli.main`` (fast); every case is refused before any
model runs, so the table stays quick.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptive_dllm.cli import main

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def work(tmp_path_factory, request) -> Path:
    """A directory of pre-existing files that no refused command may touch."""
    d = tmp_path_factory.mktemp("bad_inputs")
    from adaptive_dllm.importance.artifact import HeadImportance
    from adaptive_dllm.models.checkpoints import read_config

    config, _ = read_config()
    scores = torch.rand(config.n_layers, config.n_heads, generator=torch.Generator().manual_seed(0))
    HeadImportance(scores, "query", {"estimator": "random"}).save(d / "v.safetensors")
    (d / "report.json").write_text('{"kept": true}\n')
    (d / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\xff\xfe binary")
    (d / "foreign.jsonl").write_text('{"name": "not a bench record"}\n')
    (d / "notes.txt").write_text("my notes\n")
    (d / "held.txt").write_bytes(b"Some held-out text.\n" * 100)
    (d / "bad.txt").write_bytes(b"caf\xc3\xa9 \xff not utf-8\n" * 50)
    (d / "a_dir").mkdir()
    _tokenizer_model(d / "hfmodel", request)
    _nan_model(d / "nanmodel", request)
    return d


def _fixtures(request) -> Path:
    return request.getfixturevalue("fixtures_dir")


def _tokenizer_model(target: Path, request) -> None:
    """The llada_tiny fixture plus a tokenizer.json and a broken chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    shutil.copytree(_fixtures(request) / "llada_tiny", target)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"])
    tok.train_from_iterator(["hello world, some held out text"] * 10, trainer)
    tok.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{% for m in messages %}{{ m['content'] }"}))


def _nan_model(target: Path, request) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(_fixtures(request) / "llada_tiny", target)
    tensors = {k: torch.full_like(v, float("nan"))
               for k, v in load_file(target / "model.safetensors").items()}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


TINY_BENCH = ["bench", "--tiny", "--device", "cpu", "--lengths", "256", "--e2e-lengths", "128",
              "--steps", "8", "--gen-length", "16"]
PRUNE = ["prune", "--importance", "{w}/v.safetensors"]
HUGE = str(2**64)

# (id, argv with {w} = the work directory, words the message must contain)
CASES = [
    # 1. files are never lost
    ("prune-out-is-input", [*PRUNE, "--out", "{w}/v.safetensors"], "also an input"),
    ("prune-out-is-text", [*PRUNE, "--text", "{w}/held.txt", "--out", "{w}/held.txt"],
     "also an input"),
    ("prune-out-dir", [*PRUNE, "--out", "{w}/a_dir"], "is a directory"),
    ("prune-out-under-file", [*PRUNE, "--out", "{w}/notes.txt/r.json"], "is not a directory"),
    ("prune-out-missing-dir", [*PRUNE, "--out", "{w}/nope/r.json"], "does not exist"),
    ("bench-out-safetensors", [*TINY_BENCH, "--out", "{w}/w.safetensors"], "not JSON"),
    ("bench-out-foreign-jsonl", [*TINY_BENCH, "--out", "{w}/foreign.jsonl"],
     "another kind of record"),
    ("bench-out-notes", [*TINY_BENCH, "--out", "{w}/notes.txt"], "not JSON"),
    ("bench-out-dir", [*TINY_BENCH, "--out", "{w}/a_dir"], "is a directory"),
    ("bench-plot-missing-dir", [*TINY_BENCH, "--plot", "{w}/nope/s.png"], "does not exist"),
    ("budget-plot-dir", ["budget", "--shape", "2x2", "--blocks", "4", "--plot", "{w}/a_dir"],
     "file format"),
    ("budget-plot-is-input", ["budget", "--importance", "{w}/v.safetensors", "--blocks", "4",
                              "--plot", "{w}/v.safetensors"], "file format"),
    ("fidelity-plot-missing-dir", ["eval", "fidelity", "--plot", "{w}/nope/f.png"],
     "does not exist"),
    # 3. downloads only on request
    ("generate-missing-model", ["generate", "hi", "--model", "{w}/models/llada"],
     "--download"),
    ("generate-hub-id", ["generate", "hi", "--model", "GSAI-ML/LLaDA-8B-Instruct"], "--download"),
    ("eval-hub-id", ["eval", "nll", "--model", "GSAI-ML/LLaDA-8B-Instruct"], "download=True"),
    # 4. bytes
    ("generate-bytes-hf-tokenizer", ["generate", "h\udcffi", "--model", "{w}/hfmodel"],
     "byte 0xff at byte position 1"),
    ("eval-text-bytes-hf-tokenizer", ["eval", "nll", "--model", "{w}/hfmodel", "--text",
                                      "{w}/bad.txt"], "byte 0xff at byte position 6"),
    # 5. bad values
    ("generate-steps-huge", ["generate", "hi", "--steps", "100000000"], "must be in [1, 2048]"),
    ("generate-steps-zero", ["generate", "hi", "--steps", "0"], "must be in [1, 2048]"),
    ("generate-gen-length-zero", ["generate", "hi", "--gen-length", "0"], "at least 1"),
    ("generate-seed-huge", ["generate", "hi", "--seed", "99999999999999999999"], "64-bit"),
    ("generate-seed-2-64", ["generate", "hi", "--seed", HUGE], "64-bit"),
    ("generate-seed-negative", ["generate", "hi", "--seed", "-1"], "64-bit"),
    ("generate-device-gpu", ["generate", "hi", "--device", "gpu"], "--device cuda"),
    ("generate-device-bogus", ["generate", "hi", "--device", "tpu7"], "unknown device"),
    ("generate-chat-template", ["generate", "hi", "--chat", "--model", "{w}/hfmodel"],
     "chat_template in tokenizer_config.json is malformed"),
    ("generate-nan-weights", ["generate", "1 2 3", "--ids", "--model", "{w}/nanmodel"],
     "non-finite values"),
    ("prune-length-zero", [*PRUNE, "--length", "0"], "at least 1"),
    ("prune-seeds-zero", [*PRUNE, "--seeds", "0"], "at least 1"),
    ("prune-nll-seed-huge", [*PRUNE, "--nll-seed", HUGE], "64-bit"),
    ("eval-nll-length-zero", ["eval", "nll", "--length", "0"], "at least 1"),
    ("eval-nll-seed-huge", ["eval", "nll", "--seed", HUGE], "64-bit"),
    ("eval-nll-device-gpu", ["eval", "nll", "--device", "gpu"], "--device cuda"),
    ("fidelity-steps-huge", ["eval", "fidelity", "--steps", "100000000"], "must be in [1,"),
    ("fidelity-plot-txt", ["eval", "fidelity", "--plot", "{w}/f.txt"], "'txt' file format"),
    ("fidelity-max-new-tokens-zero", ["eval", "fidelity", "--max-new-tokens", "0"], "at least 1"),
    ("budget-plot-txt", ["budget", "--shape", "2x2", "--blocks", "4", "--plot", "{w}/keep.txt"],
     "'txt' file format"),
    ("budget-plot-no-suffix", ["budget", "--shape", "2x2", "--blocks", "4", "--plot",
                               "{w}/keep"], "no file format"),
    ("budget-seed-huge", ["budget", "--shape", "2x2", "--synthetic", "lognormal", "--blocks",
                          "4", "--seed", HUGE], "64-bit"),
    ("bench-device-gpu", ["bench", "--device", "gpu"], "--device cuda"),
    ("bench-steps-huge", [*TINY_BENCH[:-4], "--steps", "100000", "--gen-length", "16"],
     "must be in [1, 256]"),
    ("bench-gen-length-zero", [*TINY_BENCH[:-2], "--max-new-tokens", "0"], "at least 1"),
    ("bench-length-zero", ["bench", "--tiny", "--device", "cpu", "--lengths", "0"],
     "at least 1"),
    ("bench-plot-txt", [*TINY_BENCH, "--plot", "{w}/s.txt"], "'txt' file format"),
    # found by an audit: zero read as "not set", or accepted and printing nothing
    ("estimate-text-length-zero", ["importance", "estimate", "--method", "entropy", "--data",
                                   "{w}/held.txt", "--text-length", "0", "--out",
                                   "{w}/e.safetensors"], "at least 1"),
    ("fidelity-calibration-zero", ["eval", "fidelity", "--calibration", "0"], "at least 1"),
    ("show-top-zero", ["importance", "show", "{w}/v.safetensors", "--top", "0"], "at least 1"),
    ("show-top-negative", ["importance", "show", "{w}/v.safetensors", "--top", "-3"],
     "at least 1"),
    ("bench-deadline-negative", [*TINY_BENCH, "--deadline", "-1"], "above 0"),
    ("bench-decode-window-over-keys", ["bench", "--tiny", "--device", "cpu", "--what", "decode",
                                       "--lengths", "256", "--window", "1000"],
     "at most the shortest --lengths (256)"),
    ("generate-history-is-importance", ["generate", "hi", "--sparse", "adaptive", "--importance",
                                        "{w}/v.safetensors", "--history", "{w}/v.safetensors"],
     "also an input"),
]
if NO_CUDA:
    CASES += [
        ("generate-cuda0-without-cuda", ["generate", "hi", "--device", "cuda:0"], "no CUDA GPU"),
        ("bench-cuda0-without-cuda", ["bench", "--device", "cuda:0"], "no CUDA GPU"),
        ("eval-cuda-without-cuda", ["eval", "nll", "--device", "cuda"], "no CUDA GPU"),
    ]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(work, capsys, argv, words):
    before = _hashes(work)
    code = main([a.replace("{w}", str(work)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("adllm ") and ": error: " in err, err
    assert "Traceback" not in err
    assert words in err, err
    assert _hashes(work) == before


def test_a_refused_output_is_refused_before_the_run(work, capsys, monkeypatch):
    """prune --out v.safetensors never gets as far as loading the model."""
    import adaptive_dllm.models.checkpoints as ckpt

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(ckpt, "load", load)
    code = main(["prune", "--importance", str(work / "v.safetensors"),
                 "--out", str(work / "v.safetensors")])
    assert code == 2 and "also an input" in capsys.readouterr().err


def test_cuda_device_without_cuda_is_one_line_in_a_subprocess(tmp_path):
    """The real process (argv, exit status) for one case: no traceback on a CPU-only machine."""
    import os
    import subprocess
    import sys

    if not NO_CUDA:
        pytest.skip("this machine has CUDA")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-m", "adaptive_dllm.cli", "bench", "--device",
                           "cuda:0"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no CUDA GPU" in proc.stderr
