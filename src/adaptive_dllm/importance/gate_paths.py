"""The pieces of HeadIG: mask variants, gate paths, the integrated-gradients sum, the objective.

Shape legend: Ly layers, H query heads per layer, L sequence length, Vv mask variants of one
example, V vocabulary, M masked positions.

See :mod:`adaptive_dllm.importance.headig` for the method (objective, paths, discretisation);
:func:`~adaptive_dllm.importance.headig.headig` puts these pieces together over the examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaptive_dllm.importance.calibration import Example, scored_span
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.transformer import fused_kernels

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.importance.headig import HeadIGSettings

__all__ = ["GradFn", "MaskedObjective", "derive_seed", "gate_path", "integrated_gradients",
           "mask_variants", "postprocess", "stp_thresholds"]

LossMode = Literal["mean_masked", "sum"]
PostProcess = Literal["signed", "abs", "relu"]
Rule = Literal["midpoint", "right"]

GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # gates -> (J, dJ/dgates)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the given parts (stable across runs, platforms and processes)."""
    digest = hashlib.sha256("|".join(map(str, ("headig", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def mask_variants(
    example: Example, settings: HeadIGSettings, index: int, *, mask_id: int, logit_shift: bool
) -> tuple[Tensor, Tensor]:
    """The masked inputs of one example: (inputs (Vv, L) int64, masked (Vv, L) bool).

    Variant order is ratio-major. Each variant masks every position of the scored span
    independently with probability r (at least one position), from a CPU generator seeded with
    (seed, index, ratio index, sample).
    """
    begin, end = scored_span(example, logit_shift)
    n = end - begin
    inputs, masked = [], []
    for j, ratio in enumerate(settings.mask_ratios):
        for s in range(settings.mask_samples):
            gen = torch.Generator().manual_seed(derive_seed("mask", settings.seed, index, j, s))
            pick = torch.rand(n, generator=gen) < ratio
            if not pick.any():
                pick[torch.randint(n, (1,), generator=gen)] = True
            m = torch.zeros(example.length, dtype=torch.bool)
            m[begin:end] = pick
            inputs.append(torch.where(m, mask_id, example.ids))
            masked.append(m)
    return torch.stack(inputs), torch.stack(masked)


def stp_thresholds(shape: tuple[int, int], *, seed: int, index: int, path: int) -> Tensor:
    """(Ly, H) float64 thresholds u ~ U[0, 1), seeded by (seed, example index, path index)."""
    gen = torch.Generator().manual_seed(derive_seed("path", seed, index, path))
    return torch.rand(shape, generator=gen, dtype=torch.float64)


def gate_path(t: float, alpha0: Tensor, thresholds: Tensor | None) -> Tensor:
    """alpha(t) of the DP path (``thresholds`` None) or of the STP path with these thresholds."""
    if thresholds is None:
        frac: Tensor | float = t
    else:
        frac = ((t - thresholds) / (1.0 - thresholds)).clamp(0.0, 1.0)
    return alpha0 + (1.0 - alpha0) * frac


def integrated_gradients(
    grad_fn: GradFn,
    alpha0: Tensor,
    *,
    steps: int,
    thresholds: Tensor | None = None,
    rule: Rule = "midpoint",
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """Integrated gradients of J along one gate path (see the module docstring for the rule).

    Args:
        grad_fn: gates (Ly, H) float32 -> (J scalar tensor, dJ/dgates (Ly, H)).
        alpha0: (Ly, H) float64 start of the path; 1 where a head is not attributed.
        steps: K.
        thresholds: (Ly, H) STP thresholds in [0, 1), or None for the diagonal path.
        rule: ``midpoint`` or ``right``.
        on_step: called after every gradient evaluation (progress bars).

    Returns:
        (Ly, H) float64 attributions; their sum approximates J(1) - J(alpha0).
    """
    ig = torch.zeros_like(alpha0)
    for k in range(1, steps + 1):
        t_eval = (k - 0.5) / steps if rule == "midpoint" else k / steps
        delta = gate_path(k / steps, alpha0, thresholds) - gate_path((k - 1) / steps, alpha0, thresholds)
        if on_step is not None:
            on_step()
        if not bool((delta != 0).any()):  # STP: no head moves in this interval, skip the pass
            continue
        _, grad = grad_fn(gate_path(t_eval, alpha0, thresholds).float())
        ig += grad.double().cpu() * delta
    return ig


class MaskedObjective:
    """J(gates) = -(1/Vv) sum_v loss_v(gates) for one example's mask variants.

    Args:
        model: the transformer.
        clean: (L,) int64 unmasked token ids (the targets).
        inputs: (Vv, L) masked inputs; masked: (Vv, L) bool, True where a token was masked.
        loss: ``mean_masked`` or ``sum``.
        batch_size: variants per forward pass.
    """

    def __init__(self, model: nn.Module, clean: Tensor, inputs: Tensor, masked: Tensor, *,
                 loss: LossMode, batch_size: int) -> None:
        self.model = model
        self.family = get_family(model.config.family)
        self.device = next(model.parameters()).device
        self.n = inputs.shape[0]
        self.loss = loss
        self.batches = []
        for i in range(0, self.n, batch_size):
            x, m = inputs[i : i + batch_size], masked[i : i + batch_size]
            targets = clean.expand_as(x)[m]  # (M,) in row-major order of m
            self.batches.append(tuple(t.to(self.device) for t in (x, m, targets)))

    def _losses(self, x: Tensor, m: Tensor, targets: Tensor, gates: Tensor) -> Tensor:
        logits = self.family.align_logits(self.model(x, head_gates=gates))  # (b, L, V)
        ce = F.cross_entropy(logits[m].float(), targets, reduction="none")  # (M,)
        rows = m.nonzero()[:, 0]  # variant of each masked position
        per_variant = torch.zeros(x.shape[0], device=ce.device).index_add(0, rows, ce)  # (b,)
        if self.loss == "mean_masked":
            per_variant = per_variant / m.sum(1)
        return per_variant

    def value(self, gates: Tensor) -> float:
        """J at ``gates`` (Ly, H), without gradients."""
        gates = gates.float().to(self.device)
        # Eager element-wise code as in value_and_grad (which needs autograd), so that the
        # completeness check compares one computation, not two roundings of it.
        with torch.no_grad(), fused_kernels(False):
            total = sum(self._losses(*batch, gates).sum() for batch in self.batches)
        return float(-total / self.n)

    def value_and_grad(self, gates: Tensor) -> tuple[Tensor, Tensor]:
        """J and dJ/dgates at ``gates`` (Ly, H), backpropagating one variant batch at a time."""
        g = gates.detach().float().to(self.device).requires_grad_(True)
        total = torch.zeros((), device=self.device)
        with torch.enable_grad():
            for batch in self.batches:
                part = -self._losses(*batch, g).sum() / self.n
                part.backward()
                total = total + part.detach()
        assert g.grad is not None
        return total, g.grad


def postprocess(ig: Tensor, mode: PostProcess) -> Tensor:
    if mode == "abs":
        return ig.abs()
    if mode == "relu":
        return ig.clamp_min(0)
    return ig
