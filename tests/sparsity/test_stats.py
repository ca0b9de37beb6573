"""SparseStats and GenerationStats: one typed definition, the JSON keys the CLI prints, and
compile time that the backends really account."""

from __future__ import annotations

import dataclasses
import json

import torch

from adaptive_dllm.attention.reference import ReferenceBackend, reference_attention
from adaptive_dllm.generation.api import generate
from adaptive_dllm.sparsity import SparseConfig, SparseStats
from adaptive_dllm.sparsity.stats import summary_stats

# What `adllm generate --json` printed under stats.sparse before the typed stats (the contract).
SPARSE_KEYS = {
    "mode", "backend", "backend_reason", "requested_backend", "likelihood", "total_steps",
    "dense_steps", "sparse_steps", "switch_step", "refresh_steps", "forwards", "plan_builds",
    "target_keep_ratio", "allocator_keep_ratio", "realized_keep_ratio",
    "realized_keep_ratio_prompt", "realized_keep_ratio_gen", "allocation_note", "region",
    "region_note", "block_size", "units", "estimator", "build_kernel", "seq_len", "time_dense_s",
    "time_plan_s", "time_sparse_s", "compile_s"}
GENERATION_KEYS = {"sampler", "steps", "batch", "prompt_length", "gen_length", "total_s",
                   "step_median_s", "step_s", "tokens_per_s", "cache", "threshold", "forwards",
                   "refreshes", "graph_replays", "tokens_per_forward", "sparse", "batch_note"}


class _CompilingReference(ReferenceBackend):
    """The oracle, logging its first call per shape as a compile (as the triton backend does)."""


    def run(self, q, k, v, *, key_mask=None, plan=None, prepared=None):
        return self.timed_first_use(("ref", q.shape[-1]), q.device,
                                    lambda: reference_attention(q, k, v, key_mask=key_mask,
                                                                plan=plan))


def test_generation_stats_keep_the_json_keys_and_read_like_the_dict(fixture_model):
    model = fixture_model("dream_tiny")
    cfg = SparseConfig(select=0.5, skip=0.25, block_size=8, backend="reference")
    out = generate(model, None, list(range(1, 57)), sparse=cfg, steps=8, gen_length=16)
    d = out.stats.to_dict()
    assert set(d) == GENERATION_KEYS and set(d["sparse"]) == SPARSE_KEYS
    json.dumps(d)  # JSON-ready as it is
    assert isinstance(out.stats.sparse, SparseStats)
    assert out.stats["sparse"] == d["sparse"] and out.stats.sparse == d["sparse"]
    assert out.stats.sparse["realized_keep_ratio"] == d["sparse"]["realized_keep_ratio"]
    assert {**out.stats}.keys() == GENERATION_KEYS
    assert "realised_keep_ratio" not in d["sparse"]  # one spelling


def test_summary_keys_come_from_the_dataclass():
    brief = SparseStats.summary_keys()
    assert brief == ("backend", "backend_reason", "dense_steps", "sparse_steps",
                     "target_keep_ratio", "realized_keep_ratio")
    detail = SparseStats.summary_keys(detail=True)
    assert set(brief) < set(detail) <= {f.name for f in dataclasses.fields(SparseStats)}


def test_compile_s_is_the_backends_own_accounting(fixture_model, monkeypatch):
    """compile_s sums what the session's backend logged during this run (it was always 0 for
    the triton backend, whose compiles were never counted)."""
    from adaptive_dllm.attention import api

    backend = _CompilingReference()
    api.available_backends()  # the built-in registry exists
    monkeypatch.setitem(api._BACKENDS, "reference", backend)
    model = fixture_model("dream_tiny")
    cfg = SparseConfig(select=0.5, skip=0.25, block_size=8, backend="reference")
    first = generate(model, None, list(range(1, 57)), sparse=cfg, steps=8, gen_length=16)
    assert len(backend.compile_log) == 1
    assert first.stats.sparse.compile_s == backend.compile_log[0].seconds > 0
    again = generate(model, None, list(range(1, 57)), sparse=cfg, steps=8, gen_length=16)
    assert again.stats.sparse.compile_s == 0.0 and len(backend.compile_log) == 1
    assert torch.equal(first.ids, again.ids)


def test_summary_stats():
    dense = summary_stats(None, 64)
    assert dense["dense_steps"] == 64 and dense["realized_keep_ratio"] is None
    assert dense["backend"] == "dense"
    st = {"backend": "flex", "backend_reason": "r", "dense_steps": 13, "sparse_steps": 51,
          "target_keep_ratio": 0.3, "realized_keep_ratio": 0.31, "extra": 1}
    assert summary_stats(st, 64) == {k: v for k, v in st.items() if k != "extra"}


def test_a_run_that_went_dense_reports_no_sparse_time(fixture_model):
    """backend="auto" on a CPU runs dense: the steps the schedule called sparse ran dense
    attention, so their time is dense time (it was reported as sparse time)."""
    model = fixture_model("llada_tiny")
    cfg = SparseConfig(select=0.5, skip=0.25, block_size=16, backend="auto")
    st = generate(model, None, list(range(1, 57)), sparse=cfg, steps=8, gen_length=16,
                  block_length=16).stats["sparse"]
    assert st["backend"] == "dense" and st["sparse_steps"] == 0
    assert st["time_sparse_s"] == 0.0 and st["time_plan_s"] == 0.0 and st["time_dense_s"] > 0
