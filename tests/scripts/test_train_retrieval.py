"""scripts/train_retrieval.py: a CPU run end to end (checkpoint, resume, eval), training items only
from seeds outside the test seeds, their layout matches what the task scores, haystacks disjoint."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation import data
from adaptive_dllm.evaluation.tasks.base import TaskItem
from adaptive_dllm.evaluation.tasks.retrieval import DEFAULT_HAYSTACK, KINDS, TEST_SEEDS, match
from adaptive_dllm.generation.api import generate
from adaptive_dllm.models import load


@pytest.fixture(scope="module")
def script(load_script):
    """The recipe; it puts scripts/ on sys.path and imports retrieval_recipe from there."""
    return load_script("train_retrieval")


@pytest.fixture(scope="module")
def rd(script):
    return sys.modules["retrieval_recipe"]


TINY = ["--device", "cpu", "--min-length", "512", "--max-length", "512", "--tokens-per-step", "1024",
        "--text-frac", "0.5", "--d-model", "32", "--n-layers", "1", "--n-heads", "4", "--n-kv-heads", "1",
        "--mlp-hidden", "64", "--warmup", "1", "--eval-every", "4", "--eval-n", "1", "--eval-kinds",
        "passkey", "--final-n", "1"]


@pytest.mark.slow
def test_cpu_run_checkpoint_resume_and_eval(script, fake_corpus, tmp_path):
    out, corpus = tmp_path / "run", fake_corpus
    assert script.main(["--data", str(corpus), "--out", str(out), "--steps", "4", "--final-lengths", "512",
                        *TINY]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [e for e in log if e["event"] == "train"]
    assert train and all(math.isfinite(e["loss"]) and math.isfinite(e["task_loss"]) for e in train)
    assert [e["step"] for e in log if e["event"] == "eval"] == [4]
    assert log[0]["train_works"] == ["hamlet", "lear"] and log[0]["heldout_works"] == list(data.HELDOUT_WORKS)
    end = next(e for e in log if e["event"] == "end")
    assert end["step"] == 4 and end["next_seed"] >= TEST_SEEDS.stop + 4
    result = json.loads((out / "eval.json").read_text())
    assert list(result["results"]["512"]) == ["passkey"] and result["results"]["512"]["passkey"]["n"] == 1

    model, tok = load(out / "final", device="cpu")
    assert model.config.n_kv_heads == 1 and model.config.max_seq_len == 17408 and tok.mask_id == 257
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 on disk, fp32 on CPU
    assert generate(model, tok, "The pass key is", gen_length=8, steps=8).ids.shape == (1, 8)

    # resume: the step count, data counter and log continue where the first run stopped
    assert script.main(["--data", str(corpus), "--out", str(out), "--steps", "2", "--resume",
                        "--final-lengths", "", *TINY]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ends = [e for e in log if e["event"] == "end"]
    assert [e["step"] for e in ends] == [4, 6] and ends[1]["next_seed"] > ends[0]["next_seed"]
    starts = [e for e in log if e["event"] == "start"]
    assert len(starts) == 2 and "--resume" in starts[1]["command"] and "--resume" not in starts[0]["command"]
    assert starts[1]["command"].startswith("python scripts/train_retrieval.py --data ")
    assert "commit" in starts[0]  # None outside a git checkout, else the short hash


def test_generator_cannot_emit_test_seed_items(rd, script):
    text = "To be, or not to be.\n" * 2000
    for bad in (0, 17, TEST_SEEDS.stop - 1):
        with pytest.raises(AdllmError, match="test seeds"):
            rd.ItemStream(text, data_seed=bad)
        with pytest.raises(AdllmError, match="test seeds"):
            rd.build_item(text, bad, 1024)
    with pytest.raises(AdllmError, match="test seeds"):
        script.parse_args(["--steps", "1", "--data-seed", "5"])
    stream = rd.ItemStream(text, data_seed=TEST_SEEDS.stop)
    seeds = [stream.draw(1024).seed for _ in range(20)]
    assert seeds == list(range(TEST_SEEDS.stop, TEST_SEEDS.stop + 20))
    stream.next_seed = TEST_SEEDS.stop - 1  # e.g. a corrupted resume state: every draw is checked
    with pytest.raises(AdllmError, match="test seeds"):
        stream.draw(1024)


@pytest.mark.parametrize("length", [512, 1024, 4096])
def test_items_have_the_length_and_the_answer_layout_the_task_scores(rd, length):
    text = "To be, or not to be.\nThat is the question.\n" * 1000
    kinds = set()
    for seed in range(TEST_SEEDS.stop, TEST_SEEDS.stop + 40):
        item = rd.build_item(text, seed, length)
        kinds.add(item.kind)
        assert len(item.ids) == length and item.answer_start == length - rd.ANSWER_TOKENS
        prompt, answer = item.ids[: item.answer_start].decode(), item.ids[item.answer_start :]
        assert answer.rstrip(b"\0") == f" {item.target}.\n".encode()
        completion = answer.rstrip(b"\0").decode()
        scored = TaskItem(id="x", prompt=prompt, target=item.target, meta={"kind": item.kind})
        assert match(scored, completion)
        if item.kind != "vt":
            assert prompt.count(item.target) == 1
        assert prompt.rstrip().endswith(("The pass key is", "mentioned in the provided text is", " are"))
        assert rd.build_item(text, seed, length) == item  # deterministic
    assert kinds == set(KINDS)


def test_haystack_is_training_text_only(rd, fake_corpus):
    train, held = data.split_works(data.read_works(fake_corpus))
    stream = rd.ItemStream(rd.train_text(train), data_seed=TEST_SEEDS.stop)
    for _ in range(20):
        assert b"held" not in stream.draw(2048).ids


@pytest.mark.skipif(not data.DEV_CORPUS_DIR.is_dir(), reason="needs ../shared/data/shakespeare")
def test_training_haystack_disjoint_from_the_evaluation_haystack(rd):
    train, _ = data.split_works(data.read_works(data.DEV_CORPUS_DIR))
    text = rd.train_text(train)
    held = DEFAULT_HAYSTACK.read_text()
    probes = [held[i : i + 96] for i in range(0, len(held) - 96, len(held) // 64)]
    assert len(probes) >= 64 and not [p for p in probes if p in text]


def test_make_batch_rows_and_end_of_text_padding(rd):
    text = "To be, or not to be.\n" * 3000
    stream = rd.ItemStream(text, data_seed=TEST_SEEDS.stop)
    windows = data.WindowSampler({"a": text.encode()}, 1024, "cpu")
    x, starts = rd.make_batch(stream, windows, 8, 1024, 0.25, random.Random(0),
                              torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (8, 1024) and starts.tolist() == [992] * 6 + [0] * 2
    for row in x[:6, 992:].tolist():  # the answer line, then end-of-text up to the region's end
        end = row.index(10) + 1
        assert 0 not in row and all(b < 256 for b in row[:end]) and set(row[end:]) <= {256}
    assert (x[6:] < 256).all()


def test_loss_masks_only_answers_of_task_rows(script):
    seen = []

    class Uniform(torch.nn.Module):
        config = type("C", (), {"family": "llada"})()

        def forward(self, ids):
            seen.append(ids.clone())
            return torch.zeros(*ids.shape, 16)

    x = torch.randint(0, 8, (64, 256))
    starts = torch.tensor([224] * 32 + [0] * 32)
    loss, parts = script.diffusion_loss(Uniform(), x, starts, mask_id=15, answer_mask_min=0.3,
                                        gen=torch.Generator().manual_seed(0))
    inputs = seen[0]
    assert (inputs[:32, :224] == x[:32, :224]).all()  # prompts are never masked
    masked = inputs == 15
    assert masked[:32, 224:].float().mean() > 0.5  # answers: p in [0.3, 1], mean 0.65
    assert masked[32:].any(dim=1).float().mean() > 0.9  # plain rows: masks anywhere
    # E[masked / p] = 1 per maskable position: every row's loss estimates log V
    for value in (loss, parts["task"], parts["text"]):
        assert value.item() == pytest.approx(math.log(16), rel=0.08)


def test_curriculum_and_lengths(rd, script):
    args = script.parse_args(["--steps", "10", "--min-length", "1024", "--max-length", "8192"])
    lengths = rd.curriculum(args)
    assert lengths == [1024, 2048, 4096, 8192]
    assert [rd.stage_length(p, lengths) for p in (0.0, 0.3, 0.5, 0.99)] == [1024, 2048, 4096, 8192]
    rng = random.Random(0)
    drawn = {rd.step_length(8192, 0.5, rng) for _ in range(200)}
    assert drawn == {512, 1024, 2048, 4096, 8192}
    assert {rd.step_length(512, 1.0, rng) for _ in range(10)} == {512}
    with pytest.raises(SystemExit):
        rd.curriculum(script.parse_args(["--steps", "1", "--min-length", "1000", "--max-length", "3000"]))


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--minutes", "-1"], ["--steps", "1", "--text-frac", "1"]])
def test_bad_budgets_are_refused(script, bad):
    with pytest.raises(SystemExit):
        script.parse_args(bad)


@pytest.mark.slow
def test_eval_only_with_deadline_counts_items(script, fake_corpus, tmp_path):
    out, corpus = tmp_path / "run", fake_corpus
    assert script.main(["--data", str(corpus), "--out", str(out), "--steps", "1", "--final-lengths", "",
                        *TINY]) == 0
    assert script.main(["--data", str(corpus), "--out", str(out), "--eval-only", "--final-lengths", "512",
                        "--final-max-minutes", "0", *TINY]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["results"] == {"512": {}}  # the deadline had passed: no item, no made-up score
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["event"] == "final_eval"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_attention_runs_a_fused_kernel_on_gpu(script):
    script.check_fused_attention(torch.device("cuda"))  # raises if only the math kernel could run


def test_train_kinds_are_parsed_and_checked(script):
    assert script.parse_args(["--steps", "1", "--train-kinds", "passkey,vt"]).train_kinds == ("passkey", "vt")
    for bad in ("passkey,bogus", ","):
        with pytest.raises(SystemExit):
            script.parse_args(["--steps", "1", "--train-kinds", bad])


@pytest.mark.slow
def test_init_from_a_checkpoint_of_shorter_context(script, fake_corpus, tmp_path):
    """Extending the context is what --init-from is for: only max_seq_len may differ."""
    args = ["--data", str(fake_corpus), "--steps", "1", "--final-lengths", "", *TINY]
    assert script.main([*args, "--out", str(tmp_path / "short"), "--context", "1024"]) == 0
    assert script.main([*args, "--out", str(tmp_path / "long"), "--context", "4160", "--lr", "0",
                        "--init-from", str(tmp_path / "short" / "final"),
                        "--train-kinds", "niah_single"]) == 0
    short, _ = load(tmp_path / "short" / "final", device="cpu")
    long, _ = load(tmp_path / "long" / "final", device="cpu")
    assert (short.config.max_seq_len, long.config.max_seq_len) == (1024, 4160)
    for (name, a), b in zip(short.state_dict().items(), long.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # learning rate 0: the weights are the ones loaded
    with pytest.raises(SystemExit, match="differs"):
        script.main([*args, "--out", str(tmp_path / "other"), "--d-model", "64",
                     "--init-from", str(tmp_path / "short" / "final")])


@pytest.mark.slow
def test_stop_after_ends_early_on_the_full_schedule(script, fake_corpus, tmp_path):
    out = tmp_path / "run"
    assert script.main(["--data", str(fake_corpus), "--out", str(out), "--steps", "40", "--stop-after", "20",
                        "--final-lengths", "", *TINY, "--eval-every", "20"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert next(e for e in log if e["event"] == "end")["step"] == 20
    tenth = next(e for e in log if e["event"] == "train" and e["step"] == 10)
    assert tenth["progress"] == pytest.approx(9 / 40)  # logged before the step: 9 of 40, not of 20
