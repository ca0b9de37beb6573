"""The lm-eval adapter, offline: a local task YAML over a local JSON file, the bundled model."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("lm_eval")

import adaptive_dllm as ad  # noqa: E402
from adaptive_dllm.errors import AdllmError  # noqa: E402

OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 16}
DOCS = [{"question": "ROMEO:", "answer": "x"}, {"question": "JULIET:\nO Romeo", "answer": "y"},
        {"question": "KING:", "answer": "z"}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may reach the network: hub and datasets offline, no telemetry."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    data = tmp_path / "docs.json"
    data.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    (tmp_path / "adllm_toy_gen.yaml").write_text(f"""\
task: adllm_toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 16
metric_list:
  - metric: exact_match
""")
    (tmp_path / "adllm_toy_choice.yaml").write_text(f"""\
task: adllm_toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: ["\\nthe", "\\nzqx"]
doc_to_target: 0
metric_list:
  - metric: acc
""")
    return tmp_path


def simple_evaluate(task_dir, tasks, model_args, **kwargs):
    from lm_eval import simple_evaluate as run
    from lm_eval.tasks import TaskManager

    import adaptive_dllm.integrations.lm_eval  # noqa: F401  (registers "adllm")

    return run(model="adllm", model_args=model_args, tasks=tasks,
               task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
               **kwargs)


def test_simple_evaluate_generate_until_matches_ad_generate(task_dir):
    results = simple_evaluate(task_dir, ["adllm_toy_gen"],
                              "gen_length=16,steps=16,block_length=16,device=cpu,dtype=float32",
                              batch_size=2, log_samples=True)
    samples = results["samples"]["adllm_toy_gen"]
    model, tok = ad.load(device="cpu", dtype="float32")
    for sample in samples:
        prompt = sample["arguments"][0][0]
        expected = ad.generate(model, tok, prompt, seed=0, **OPTIONS).text.split("\n\n")[0]
        assert sample["resps"][0][0] == expected
    assert len(samples) == len(DOCS)
    assert results["results"]["adllm_toy_gen"]["exact_match,none"] == 0.0


def test_generate_until_batched_equals_one_by_one_and_cuts_at_until():
    from adaptive_dllm.integrations.lm_eval import AdllmLM

    class Req:
        def __init__(self, *args):
            self.args = args

    lm1 = AdllmLM(device="cpu", dtype="float32", batch_size=1, **OPTIONS)
    lm3 = AdllmLM(device="cpu", dtype="float32", batch_size=3, **OPTIONS)
    reqs = [Req(d["question"], {"until": ["e"]}) for d in DOCS]
    one, three = lm1.generate_until(reqs), lm3.generate_until(reqs)
    assert one == three
    model, tok = lm1.model, lm1.tokenizer
    for req, text in zip(reqs, one, strict=True):
        full = ad.generate(model, tok, req.args[0], seed=0, **OPTIONS).text
        assert text == full.split("e")[0] and "e" not in text
    assert lm1.rank == 0 and lm1.world_size == 1


def test_loglikelihood_uses_the_estimator_and_rolling_is_refused(task_dir, monkeypatch):
    import adaptive_dllm.evaluation.loglik as lik

    seen = []

    def fake(model, prefix, cont, *, mc_num, batch_size, seed, attn):
        seen.append((mc_num, attn is not None))
        return -1.0 if 116 in cont else -5.0  # "t" of "\nthe" wins

    monkeypatch.setattr(lik, "estimate_loglikelihood", fake, raising=False)
    results = simple_evaluate(task_dir, ["adllm_toy_choice"],
                              "device=cpu,dtype=float32,mc_num=4,sparse=uniform,select=0.5,"
                              "block_size=32")
    assert results["results"]["adllm_toy_choice"]["acc,none"] == 1.0
    assert seen and all(s == (4, True) for s in seen) and len(seen) == 2 * len(DOCS)
    from adaptive_dllm.integrations.lm_eval import AdllmLM

    lm = AdllmLM(device="cpu", dtype="float32", **OPTIONS)
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([])


@pytest.mark.parametrize("args, match", [
    ({"nonsense": 1}, "nonsense"),
    ({"sparse": "adaptive"}, "importance=FILE"),
    ({"skip": 0.2}, "sparse=uniform"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_model_args(args, match):
    from adaptive_dllm.integrations.lm_eval import AdllmLM

    with pytest.raises(AdllmError, match=match):
        AdllmLM(device="cpu", **args)


def test_cli_passes_arguments_through(task_dir, capsys, monkeypatch):
    from adaptive_dllm.cli import main

    out = task_dir / "out"
    code = main(["eval", "lm-eval", "--tasks", "adllm_toy_gen", "--include-path", str(task_dir),
                 "--model-args", "gen_length=16,steps=16,block_length=16", "--device", "cpu",
                 "--limit", "1", "--output-path", str(out)])
    assert code == 0
    written = [p for p in out.rglob("results_*.json")]
    assert written, os.listdir(out)
    data = json.loads(written[0].read_text())
    assert data["config"]["model"] == "adllm" and "adllm_toy_gen" in data["results"]


def test_an_unknown_task_is_a_one_line_error(task_dir, capsys):
    """Found by an audit: lm-eval's ValueError came out as a traceback."""
    from adaptive_dllm.cli import main

    code = main(["eval", "lm-eval", "--tasks", "no_such_task_xyz", "--include-path",
                 str(task_dir), "--device", "cpu", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Tasks not found: no_such_task_xyz" in err and "ls tasks" in err
    assert err.strip().count("\n") == 0


class _BosBytes:
    """The bundled byte tokenizer with a BOS (byte 2) that ``encode`` adds, as HF tokenizers do."""

    bos_id = 2

    def __init__(self, inner):
        self.inner = inner

    def encode(self, text, add_special_tokens=True):
        ids = list(self.inner.encode(text))
        return [self.bos_id, *ids] if add_special_tokens else ids

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_chat_templated_context_keeps_one_bos(monkeypatch):
    """lm-eval's --apply_chat_template puts the template's BOS text into the context: the adapter
    must not add a second BOS (it did: generate() and the likelihood prefix encoded the context
    with special tokens)."""
    import adaptive_dllm.evaluation.loglik as lik
    from adaptive_dllm.integrations.lm_eval import AdllmLM

    class Req:
        def __init__(self, *args):
            self.args = args

    lm = AdllmLM(device="cpu", dtype="float32", batch_size=2, **OPTIONS)
    lm.tokenizer = _BosBytes(lm.tokenizer)
    templated, plain = "\x02ROMEO:", "KING:"
    got = lm.generate_until([Req(templated, {"until": ["\n\n"]}), Req(plain, {"until": ["\n\n"]})])
    for context, ids, text in ((templated, [2, *b"ROMEO:"], got[0]), (plain, [2, *b"KING:"], got[1])):
        expected = ad.generate(lm.model, lm.tokenizer.inner, ids, seed=0, **OPTIONS)
        assert text == expected.text.split("\n\n")[0], context

    prefixes = []

    def fake(model, prefix, cont, *, mc_num, batch_size, seed, attn):
        prefixes.append(list(prefix))
        return -1.0

    monkeypatch.setattr(lik, "estimate_loglikelihood", fake, raising=False)
    lm.loglikelihood([Req(templated, " x"), Req(plain, " x")])
    assert prefixes == [[2, *b"ROMEO:"], [2, *b"KING:"]]
