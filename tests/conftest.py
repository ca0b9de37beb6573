"""Shared fixtures: the recorded upstream reference fixtures in ``../shared/reference_fixtures``.

The directory is resolved relative to the repository root (the parent of ``tests/``); tests that
need it skip with a clear reason when it is absent.

Also shared: a scripted-logits model (samplers tested without weights), a stub attention
session, the no-host-sync source check of the samplers' step loops, and ``triton_interpreter``,
which runs a script in a fresh Python with ``TRITON_INTERPRET=1``: the project's Triton kernels
then execute on the CPU, so CI checks them without a GPU.

A test that takes an argument named ``llada_case`` or ``dream_case`` is parametrised over every
recorded generation case of that family, in every fixture directory whose ``outputs.json``
declares it, so new cases and checkpoints of other shapes are picked up without editing tests.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "reference_fixtures"
MISSING_REASON = f"reference fixtures not found at {FIXTURES} (../shared is absent)"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(MISSING_REASON)
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_model(fixtures_dir):
    """``fixture_model("llada_tiny")``: that checkpoint on CPU in float32, loaded once."""

    def get(name: str) -> Any:
        return _load_model(fixtures_dir / name)

    return get


@dataclass(frozen=True)
class RecordedCase:
    """One recorded upstream generation: its settings, tensors and model."""

    directory: Path
    name: str

    @property
    def meta(self) -> dict[str, Any]:
        """Settings and derived numbers from ``outputs.json``."""
        return _outputs(self.directory)["generate"][self.name]

    @property
    def tensors(self) -> dict[str, Any]:
        """``generate.<name>.<key>`` tensors of ``outputs.safetensors``, keyed by ``<key>``."""
        prefix = f"generate.{self.name}."
        return {k[len(prefix):]: v for k, v in _tensors(self.directory).items()
                if k.startswith(prefix)}

    @property
    def model(self) -> Any:
        return _load_model(self.directory)


# ---------------------------------------------------------------------------------------------
# Scripted-logits model and stub session

SCRIPTED_VOCAB, SCRIPTED_MASK, SCRIPTED_EOS = 32, 31, 30


class ScriptedModel(torch.nn.Module):
    """Position i proposes ``tokens[i]`` with logit ``scores[i]``, every other logit 0.

    For the ``dream`` family the sampler shifts logits by one, so position i is then decided by
    row i-1. Records every call (ids, attention mask, attn) in ``calls``.
    """

    def __init__(self, tokens: torch.Tensor, scores: torch.Tensor, family: str) -> None:
        super().__init__()
        from adaptive_dllm.models import ModelConfig

        self.config = ModelConfig(family=family, vocab_size=SCRIPTED_VOCAB, hidden_size=8,
                                  n_layers=1, n_heads=1, n_kv_heads=1, intermediate_size=8,
                                  max_seq_len=64, mask_id=SCRIPTED_MASK, eos_id=SCRIPTED_EOS,
                                  pad_id=SCRIPTED_EOS)
        self.tokens, self.scores = tokens, scores
        self.calls: list[tuple[Any, ...]] = []

    def forward(self, ids, *, attention_mask=None, attn=None, logits_from=0):  # noqa: ANN001
        mask = None if attention_mask is None else attention_mask.clone()
        self.calls.append((ids.clone(), mask, attn))
        B, L = ids.shape
        logits = torch.zeros(B, L, SCRIPTED_VOCAB)
        logits[:, torch.arange(L), self.tokens[:L]] = self.scores[:L]
        return logits[:, logits_from:]


@pytest.fixture
def scripted():
    """``scripted(P, G, family="llada", seed=0)``: random distinct proposals and confidences."""

    def make(P: int, G: int, family: str = "llada", seed: int = 0) -> ScriptedModel:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, SCRIPTED_EOS, (P + G,), generator=g)
        scores = torch.rand(P + G, generator=g) * 5 + 1
        return ScriptedModel(tokens, scores, family)

    return make


class StubSession:
    """Records ``begin_step`` calls; reports them in ``stats``."""

    def __init__(self) -> None:
        self.begun: list[tuple[int, int]] = []

    def begin_step(self, step: int, total: int) -> None:
        self.begun.append((step, total))

    def stats(self) -> dict[str, Any]:
        return {"kind": "stub", "steps_seen": len(self.begun)}

    def __call__(self, layer, q, k, v, key_mask):  # noqa: ANN001 - the dense attention
        from adaptive_dllm.attention.api import attend

        return attend(q, k, v, key_mask=key_mask)


@pytest.fixture
def stub_session():
    return StubSession


# ---------------------------------------------------------------------------------------------
# No host synchronisation inside the step loops

# Host reads: tensor -> Python conversions, device -> host copies, data-dependent shapes.
SYNC_PATTERN = re.compile(
    r"\.item\(|\.tolist\(|(?<![\w.])(int|float|bool|len)\(|\.cpu\(|\.numpy\(|nonzero|"
    r"masked_select|\.any\(\)|\.all\(\)|print\("
)


@pytest.fixture
def sync_pattern() -> re.Pattern[str]:
    return SYNC_PATTERN


@pytest.fixture
def assert_sync_free():
    """``assert_sync_free(module, sampler, helpers)``: greps the sampler's step loop (its
    outermost ``for``), each per-step helper and ``select_top`` for host reads."""
    from adaptive_dllm.generation import schedule

    def check(module: Any, sampler: str, helpers: tuple[str, ...]) -> None:
        source = textwrap.dedent(inspect.getsource(getattr(module, sampler)))
        loop = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.For))
        sources = {f"{sampler} loop": ast.get_source_segment(source, loop),
                   "select_top": inspect.getsource(schedule.select_top)}
        for name in helpers:
            sources[name] = inspect.getsource(getattr(module, name))
        for where, src in sources.items():
            found = SYNC_PATTERN.search(src)
            assert found is None, f"{found and found.group()!r} in {where}"

    return check


@pytest.fixture
def torchrun_env() -> dict[str, str]:
    """Environment of a CLI / torchrun subprocess: this checkout's ``src`` on PYTHONPATH, one
    thread per process (2 ranks share the CPU) and no rank variables from an outer launcher."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO_ROOT / "src"), OMP_NUM_THREADS="1")
    return env


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for family in ("llada", "dream"):
        arg = f"{family}_case"
        if arg in metafunc.fixturenames:
            metafunc.parametrize(arg, _recorded_cases(family))


def _recorded_cases(family: str) -> list[Any]:
    if not FIXTURES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING_REASON), id="absent")]
    params = []
    for directory in sorted(p for p in FIXTURES.iterdir() if (p / "outputs.json").is_file()):
        data = _outputs(directory)
        if data.get("family") != family:
            continue
        for name in data.get("generate", {}):
            params.append(pytest.param(RecordedCase(directory, name),
                                       id=f"{directory.name}-{name}"))
    if not params:
        reason = f"no recorded {family} generation cases under {FIXTURES}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="none")]
    return params


@cache
def _outputs(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "outputs.json").read_text())


@cache
def _tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "outputs.safetensors"))


@cache
def _load_model(directory: Path) -> Any:
    from adaptive_dllm.models import load_model

    return load_model(directory, device="cpu", dtype="float32")


@pytest.fixture
def triton_interpreter():
    """``run(code)``: execute ``code`` in a fresh interpreter with Triton's CPU interpreter on and
    ``src`` importable; returns stdout and fails the test with stderr on a non-zero exit. Skips
    where triton is not installed (the dev extra installs it on Linux) or its interpreter cannot
    run loops here (:func:`_interpreter_cannot_loop`)."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    broken = _interpreter_cannot_loop()
    if broken:
        pytest.skip(broken)
    return _run_interpreted


def _run_interpreted(code: str) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def count(out, n):
    total = 0
    for _ in range(0, n):
        total += 1
    tl.store(out, total)
out = torch.zeros(1, dtype=torch.int32)
count[(1,)](out, 3)
assert out.item() == 3
"""


@cache
def _interpreter_cannot_loop() -> str | None:
    """Why Triton's interpreter cannot run a loop over a runtime bound here, or None if it can.

    Triton 3.6's interpreter turns a scalar argument into an index with ``int()`` of a
    one-element array, which NumPy 2.5 refuses (seen on the GPU machine's image); every kernel
    with such a loop then fails before our code runs. The compiled kernels' GPU tests still run.
    """
    import numpy
    import triton

    try:
        _run_interpreted(_PROBE)
    except AssertionError as err:
        if "only 0-dimensional arrays" in str(err):
            return (f"Triton {triton.__version__}'s interpreter cannot loop over a runtime bound "
                    f"with NumPy {numpy.__version__} (a newer triton or numpy < 2.5 can)")
        raise
    return None
