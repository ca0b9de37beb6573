"""``adllm generate``: output, JSON, progress, help, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.errors import CheckpointError

LLADA_PROMPT = "31 64 68 121 45 116 53 56"
LLADA_ARGS = ["--gen-length", "16", "--block-length", "8", "--steps", "8"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_matches_the_recorded_upstream_case(fixtures_dir, capsys):
    recorded = json.loads((fixtures_dir / "llada_tiny" / "outputs.json").read_text())
    expected = recorded["generate"]["lowconf_s8_b8"]["generated_ids"][0]
    code, out, err = _run(capsys, ["generate", LLADA_PROMPT, "--ids", "--model",
                                   str(fixtures_dir / "llada_tiny"), *LLADA_ARGS, "--json",
                                   "--device", "cpu"])
    assert code == 0
    record = json.loads(out)  # exactly one JSON object
    assert record["ids"] == expected and record["text"] is None
    assert record["stats"]["steps"] == 8 and record["stats"]["sampler"] == "llada"
    assert err == ""  # no progress bar, no summary with --json


def test_plain_output_prints_the_generation(fixtures_dir, capsys):
    code, out, err = _run(capsys, ["generate", "15,65,61,50", "--ids", "--model",
                                   str(fixtures_dir / "dream_tiny"), "--gen-length", "8",
                                   "--alg", "entropy", "--top-k", "50", "--seed", "1"])
    assert code == 0
    assert len(out.split()) == 8 and all(t.isdigit() for t in out.split())
    assert "8 steps" in err


def test_text_prompt_with_a_tokenizer_and_progress_bar(monkeypatch, capsys, scripted):
    from adaptive_dllm.cli import generate as cli_generate
    from adaptive_dllm.models.tokenizer import ByteTokenizer

    model = scripted(8, 16)
    monkeypatch.setattr("adaptive_dllm.models.checkpoints.load",
                        lambda *a, **k: (model, ByteTokenizer()))
    monkeypatch.setattr(cli_generate.sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = _run(capsys, ["generate", "ab", "--gen-length", "16", "--steps", "4"])
    assert code == 0 and out.endswith("\n")
    assert "/4 [" in err  # the tqdm bar over the 4 steps


@pytest.mark.parametrize("extra, words", [
    (["--gen-length", "16", "--block-length", "5"], ["gen_length=16", "block_length=5"]),
    (["--steps", "0"], ["--steps 0 must be in [1, 2048]"]),
    (["--steps", "100000000"], ["--steps 100000000 must be in [1, 2048]"]),
    (["--gen-length", "16", "--block-length", "8", "--steps", "7"], ["steps=7"]),
    (["--gen-length", "5000"], ["5000", "4096"]),
    (["--alg", "entropy"], ["alg", "llada", "remasking"]),
])
def test_bad_input_is_one_line_and_exit_2(fixtures_dir, capsys, extra, words):
    code, out, err = _run(capsys, ["generate", LLADA_PROMPT, "--ids", "--model",
                                   str(fixtures_dir / "llada_tiny"), *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("adllm generate: error:")
    for word in words:
        assert word in err


def test_missing_model_directory(capsys, tmp_path):
    code, _, err = _run(capsys, ["generate", "1 2", "--ids", "--model", str(tmp_path / "nope")])
    assert code == 2 and "nope" in err and err.count("\n") == 1


def test_text_without_tokenizer_asks_for_ids(fixtures_dir, capsys):
    code, _, err = _run(capsys, ["generate", "hello", "--model", str(fixtures_dir / "llada_tiny")])
    assert code == 2 and "--ids" in err


def test_bad_ids(fixtures_dir, capsys):
    code, _, err = _run(capsys, ["generate", "1 x", "--ids", "--model",
                                 str(fixtures_dir / "llada_tiny")])
    assert code == 2 and "--ids" in err


def test_missing_bundled_model_says_so(monkeypatch, capsys):
    def missing(*a, **k):
        raise CheckpointError("tiny/config.json is missing")

    monkeypatch.setattr("adaptive_dllm.models.checkpoints.load", missing)
    code, _, err = _run(capsys, ["generate", "ROMEO:"])
    assert code == 2 and "bundled model" in err and "--model" in err


def test_untrained_bundled_model_says_so(monkeypatch, capsys, scripted):
    model = scripted(4, 8)
    model.untrained = True
    monkeypatch.setattr("adaptive_dllm.models.checkpoints.load", lambda *a, **k: (model, None))
    code, out, err = _run(capsys, ["generate", "1 2", "--ids", "--gen-length", "8", "--json"])
    assert code == 0 and "untrained" in err
    assert "untrained" in json.loads(out)["warning"]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "examples:" in out and "adllm generate" in out and "--json" in out


def test_json_is_serialisable_with_session_tensors(fixtures_dir, monkeypatch, capsys):
    """Stats from a session may hold tensors; --json still prints one object."""
    import dataclasses

    import adaptive_dllm.generation.api as api

    real = api.generate

    def with_tensor_stats(*a, **k):
        out = real(*a, **k)
        stats = dataclasses.replace(out.stats, sparse={"keep_ratio": torch.tensor(0.5)})
        return dataclasses.replace(out, stats=stats)

    monkeypatch.setattr(api, "generate", with_tensor_stats)
    code, out, _ = _run(capsys, ["generate", LLADA_PROMPT, "--ids", "--model",
                                 str(fixtures_dir / "llada_tiny"), *LLADA_ARGS, "--json"])
    assert code == 0 and json.loads(out)["stats"]["sparse"]["keep_ratio"] == 0.5


def test_default_generation_from_romeo_reads_like_a_play(capsys):
    """Issue #3: `adllm generate "ROMEO:"` with default settings prints play text: a speaker line
    in the corpus layout (`NAME:` alone on a line) and lines of words, not byte noise."""
    import re

    code, out, _ = _run(capsys, ["generate", "ROMEO:", "--device", "cpu"])
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert any(re.fullmatch(r"[A-Z][A-Z' ]+:", line) for line in lines), out
    verse = [line for line in lines if re.fullmatch(r"[A-Za-z][A-Za-z ,;:.'!?-]+", line)]
    assert len(verse) >= 2 and sum(len(line) for line in verse) > 60, out


# ---------------------------------------------------------------------------------------------
# Cache, threshold decoding, history (issue 14 acceptance)


def test_cache_and_threshold_stats_on_the_bundled_model(tmp_path, capsys):
    """``adllm generate "ROMEO:" --cache prefix --threshold 0.9 --json``: stats carry cache,
    forwards, tokens_per_forward, and threshold decoding takes fewer forwards than tokens."""
    hist, gif = tmp_path / "h.json", tmp_path / "h.gif"
    code = main(["generate", "ROMEO:", "--cache", "prefix", "--threshold", "0.9", "--json",
                 "--block-length", "32", "--history", str(hist), "--history-gif", str(gif)])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["cache"] == "prefix" and stats["refreshes"] == 4  # 128 tokens, blocks of 32
    assert stats["forwards"] < stats["gen_length"] == 128
    assert stats["tokens_per_forward"] == pytest.approx(128 / stats["forwards"])
    record = json.loads(hist.read_text())
    assert record["shape"] == [stats["forwards"] + 1, 1, 128]
    assert set(record["frames"][0][0]) == {record["mask_id"]}
    assert record["mask_id"] not in record["frames"][-1][0]
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left no temporary file


def test_history_into_a_missing_directory_fails_before_generating(tmp_path, capsys):
    code = main(["generate", "ROMEO:", "--history", str(tmp_path / "no" / "h.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_cache_with_sparse_reference_backend_on_cpu(capsys):
    code = main(["generate", "ROMEO:", "--cache", "dual", "--sparse", "uniform", "--select",
                 "0.5", "--block-size", "32", "--sparse-backend", "reference", "--gen-length",
                 "64", "--block-length", "32", "--json"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    sparse = stats["sparse"]
    assert stats["cache"] == "dual" and sparse["backend"] == "reference"
    assert sparse["schedule_over"] == "refresh forwards"
    assert sparse["sparse_steps"] == 1 and sparse["cached_sparse_steps"] == 62


def test_fast_turns_on_the_preset_and_gives_the_same_text_as_its_options(capsys):
    """``--fast`` is exactly ``FAST_OPTIONS`` spelled out (same ids, same stats' settings)."""
    from adaptive_dllm.generation.cache import FAST_OPTIONS

    base = ["generate", "ROMEO:", "--gen-length", "32", "--block-length", "16", "--json"]
    assert main([*base, "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out)
    spelled = [f"--{k}={v}" for k, v in FAST_OPTIONS.items()]
    assert main([*base, *spelled]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert fast["ids"] == explicit["ids"]
    for key, value in FAST_OPTIONS.items():
        assert fast["stats"][key] == explicit["stats"][key] == value
    assert fast["stats"]["forwards"] <= 32


def test_no_cuda_graphs_reaches_the_sampler(monkeypatch, capsys):
    from adaptive_dllm.generation import api

    seen = []
    real = api.make_options

    def spy(family, **options):
        seen.append(options.get("cuda_graphs", "unset"))
        return real(family, **options)

    monkeypatch.setattr(api, "make_options", spy)
    base = ["generate", "ROMEO:", "--gen-length", "16", "--block-length", "8", "--cache", "prefix",
            "--json"]
    assert main([*base, "--no-cuda-graphs"]) == 0 and main(base) == 0
    capsys.readouterr()
    assert seen == [False, "unset"]  # not given: the sampler's own default (on)


def test_fast_yields_to_explicit_cache_and_threshold(capsys):
    assert main(["generate", "ROMEO:", "--gen-length", "32", "--block-length", "16", "--json",
                 "--fast", "--cache", "dual", "--threshold", "0.7"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["cache"] == "dual" and stats["threshold"] == 0.7


def test_history_must_not_overwrite_the_importance_file(tmp_path, capsys):
    """Found by an audit: --history was the one output with no "is also an input" check."""
    from adaptive_dllm.importance.artifact import HeadImportance

    imp = tmp_path / "heads.safetensors"
    HeadImportance(scores=torch.rand(8, 8), head_kind="query", metadata={}).save(imp)
    before = imp.read_bytes()
    code = main(["generate", "ROMEO:", "--gen-length", "16", "--steps", "8", "--sparse",
                 "adaptive", "--importance", str(imp), "--block-size", "16", "--history",
                 str(imp)])
    err = capsys.readouterr().err
    assert code == 2 and "also an input" in err and err.count("\n") == 1
    assert imp.read_bytes() == before


def test_history_and_history_gif_must_differ(tmp_path, capsys):
    same = tmp_path / "steps.gif"
    code = main(["generate", "ROMEO:", "--gen-length", "8", "--steps", "8",
                 "--history", str(same), "--history-gif", str(same)])
    err = capsys.readouterr().err
    assert code == 2 and "--history-gif" in err and "also an input" in err
    assert not same.exists()


@pytest.mark.parametrize("extra, flag", [(["--steps", "8"], "--steps"),
                                         (["--remasking", "random"], "--remasking random")])
def test_fast_names_itself_when_an_option_clashes_with_its_threshold(capsys, extra, flag):
    """A clash with the preset's threshold blames --fast, not an option the user never typed."""
    code = main(["generate", "ROMEO:", "--gen-length", "16", "--fast", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--fast sets --threshold 0.9" in err and f"drop --fast or {flag}" in err


def test_fast_follows_the_samplers_rule_for_steps(capsys):
    """--steps equal to --gen-length changes nothing under a threshold: the library accepts it,
    and so does --fast (it once refused any --steps); --steps without --gen-length is refused,
    since the default length is the sampler's."""
    code = main(["generate", "ROMEO:", "--gen-length", "16", "--steps", "16", "--fast", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["stats"]["cache"] == "prefix"
    code = main(["generate", "ROMEO:", "--steps", "16", "--fast"])
    assert code == 2 and "drop --fast or --steps" in capsys.readouterr().err
