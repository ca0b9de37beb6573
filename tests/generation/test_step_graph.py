"""CUDA graphs of cached steps: a replay gives the eager step's tokens; what runs them, when.

The equality tests need a GPU; on CPU the graphs are off by construction (tested here too)."""

from __future__ import annotations

import pytest
import torch

import adaptive_dllm as ad
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import DreamOptions, LladaOptions
from adaptive_dllm.generation.cache import BlockCache, LoopCounts
from adaptive_dllm.generation.llada import sample_llada
from adaptive_dllm.generation.step_graph import StepGraph, call_model, step_runner
from adaptive_dllm.models import load_model
from adaptive_dllm.sparsity import SparseConfig


def gpu_test(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(),
                                              reason="needs a CUDA GPU")(test))


def test_graphs_are_off_without_a_cache_or_off_cuda():
    counts = LoopCounts()
    cache = BlockCache("prefix", 2, 8)
    assert step_runner(True, cache, torch.device("cpu"), counts) is call_model
    assert step_runner(True, None, torch.device("cuda"), counts) is call_model
    assert step_runner(False, cache, torch.device("cuda"), counts) is call_model


def test_cuda_graphs_must_be_a_bool():
    for options in (LladaOptions, DreamOptions):
        with pytest.raises(AdllmError, match="cuda_graphs"):
            options(cuda_graphs="yes")


def test_cpu_runs_report_no_replays():
    model, tok = ad.load()
    out = ad.generate(model, tok, "ROMEO:", gen_length=16, block_length=8, cache="prefix")
    assert out.stats["graph_replays"] == 0


def _pair(generate):
    eager, graphed = generate(cuda_graphs=False), generate(cuda_graphs=True)
    assert eager.stats["graph_replays"] == 0
    return eager, graphed


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("backend", [None, "triton"])
@gpu_test
def test_replayed_cached_steps_give_the_eager_tokens_llada(cache, backend):
    model, tok = ad.load(device="cuda", dtype=torch.bfloat16)
    sparse = None if backend is None else SparseConfig(select=0.5, skip=0.2, block_size=16,
                                                        backend=backend)
    prompts = ["ROMEO: " * 12, "JULIET: " * 9]  # a left-padded batch of two

    def run(**kw):
        return ad.generate(model, tok, prompts, gen_length=32, block_length=8, cache=cache,
                           sparse=sparse, **kw)

    eager, graphed = _pair(run)
    assert torch.equal(graphed.sequences, eager.sequences)
    # 4 blocks of 8 steps: 7 cached steps each, the first eager (warm-up), the rest replayed.
    assert graphed.stats["graph_replays"] == 4 * 6
    if sparse is not None:
        s = graphed.stats["sparse"]
        assert (s["cached_dense_steps"], s["cached_sparse_steps"]) == (0, 28)


@gpu_test
def test_replayed_cached_steps_give_the_eager_tokens_under_threshold_and_cfg():
    model, tok = ad.load(device="cuda", dtype=torch.bfloat16)

    def run(**kw):
        return ad.generate(model, tok, "ROMEO:", gen_length=32, block_length=8, cache="dual",
                           threshold=0.5, cfg_scale=0.5, **kw)

    eager, graphed = _pair(run)
    assert torch.equal(graphed.sequences, eager.sequences)
    assert graphed.stats["forwards"] == eager.stats["forwards"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@gpu_test
def test_replayed_cached_steps_give_the_eager_tokens_dream(fixtures_dir, cache):
    model = load_model(fixtures_dir / "dream_tiny", device="cuda", dtype=torch.bfloat16)
    sparse = SparseConfig(select=0.5, skip=0.2, block_size=16, backend="triton")

    def run(**kw):
        return ad.generate(model, None, list(range(5, 45)), gen_length=16, block_length=4,
                           cache=cache, sparse=sparse, **kw)

    eager, graphed = _pair(run)
    assert torch.equal(graphed.sequences, eager.sequences)
    assert graphed.stats["graph_replays"] == 4 * 2


@gpu_test
def test_a_step_that_reads_back_to_the_host_cannot_be_recorded():
    model, _ = ad.load(device="cuda", dtype=torch.bfloat16)

    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, ids, **kw):
            out = self.inner(ids, **kw)
            out.sum().item()  # a host read: not allowed while a graph records
            return out

    ids = torch.tensor([[10, 20, 30, 40]], device="cuda")
    with pytest.raises(AdllmError, match="cuda_graphs=False"):
        sample_llada(Syncing(), ids, options=LladaOptions(gen_length=16, block_length=8,
                                                          cache="prefix"))
    out = sample_llada(Syncing(), ids, options=LladaOptions(gen_length=16, block_length=8,
                                                            cache="prefix", cuda_graphs=False))
    assert out.shape == (1, 20)


@gpu_test
def test_a_refresh_drops_the_graph():
    counts = LoopCounts()
    graph = StepGraph(torch.device("cuda"), counts)
    cache = BlockCache("prefix", 1, 8)
    calls = []

    def model(ids, **kw):
        calls.append(ids.shape)
        return ids.float() * 2

    ids = torch.arange(4, device="cuda")[None]
    cache.window = (4, 8)
    for _ in range(3):  # eager, recorded + replayed, replayed
        assert torch.equal(graph(model, ids, cache=cache, logits_from=0), ids.float() * 2)
    assert (len(calls), counts.graph_replays) == (2, 2)
    cache.window = None  # a refresh
    graph(model, ids, cache=cache)
    cache.window = (4, 8)
    graph(model, ids + 1, cache=cache, logits_from=0)  # eager again: the graph was dropped
    assert (len(calls), counts.graph_replays) == (4, 2)
