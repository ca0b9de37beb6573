"""LLaDA's upstream evaluation options: ``logits_eos_inf`` and ``confidence_eos_eot_inf``."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import LladaOptions, sample_llada

EOS = 30  # the scripted model's EOS id (tests/conftest.py)


def _eos_model(scripted):
    """Positions 3 and 6 propose EOS, position 3 with the highest confidence of all."""
    model = scripted(2, 8)
    model.tokens[[3, 6]] = EOS
    model.scores[3] = 100.0
    return model


def _run(model, **kw):
    history: list[torch.Tensor] = []
    opts = LladaOptions(gen_length=8, steps=8, **kw)
    with torch.inference_mode():
        out = sample_llada(model, torch.tensor([[1, 2]]), options=opts, history=history)
    return out[0, 2:], torch.stack(history)[:, 0, 2:]


def test_logits_eos_inf_never_proposes_eos(scripted):
    plain, _ = _run(_eos_model(scripted))
    assert (plain == EOS).sum() == 2
    out, _ = _run(_eos_model(scripted), logits_eos_inf=True)
    assert not (out == EOS).any()


def test_confidence_eos_eot_inf_commits_eos_last(scripted):
    mask = 31
    _, plain = _run(_eos_model(scripted))
    assert plain[1, 1] == EOS  # the most confident proposal (EOS) goes first without the flag
    out, hist = _run(_eos_model(scripted), confidence_eos_eot_inf=True)
    assert (out == EOS).sum() == 2  # still proposed, and committed when nothing else is left
    first_eos_step = int(((hist == EOS).any(-1)).nonzero()[0])
    unmasked_before = (hist[first_eos_step - 1] != mask).sum()
    assert unmasked_before == 6  # every non-EOS proposal was committed before any EOS


def test_flags_must_be_booleans():
    with pytest.raises(AdllmError, match="logits_eos_inf=1 must be True or False"):
        LladaOptions(logits_eos_inf=1)
