"""EleutherAI lm-evaluation-harness adapter: the ``adllm`` model of ``lm-eval``.

Needs the optional extra (``pip install "adaptive-dllm[lm-eval]"``). Importing this module
registers the model class under the name ``adllm``; ``adllm eval lm-eval ...`` does that and
passes every other argument to lm-eval's own command line::

    adllm eval lm-eval --tasks gsm8k --model_args pretrained=DIR,gen_length=256,steps=256,\\
        block_length=32,sparse=adaptive,select=0.3,importance=heads.safetensors

``model_args`` (all optional):

* ``pretrained`` (or ``model``): checkpoint directory; default the bundled model.
* ``device``, ``dtype``, ``batch_size`` (requests per generation batch), ``seed``.
* sampler options of the model's family (``steps``, ``gen_length``, ``block_length``,
  ``temperature``, ``cfg_scale``, ``remasking``, ``alg`` ...). Without ``gen_length`` a request's
  ``max_gen_toks`` is used (one block, ``steps`` = ``gen_length``).
* ``sparse=uniform|adaptive``, ``select``, ``importance=FILE`` and the other sparse options
  (``skip``, ``block_size``, ``sparse_backend``, ``region``, ``min_keep_ratio``, ``refresh``).
* ``mc_num``: Monte-Carlo samples of the masked log-likelihood estimator (``loglikelihood``).

Data parallel: under ``accelerate launch`` or ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every
process joins one process group and reports its ``rank``/``world_size``; lm-eval then gives each
rank its share of the requests and gathers through :meth:`AdllmLM.all_gather` and friends, as with
its own model classes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch

from adaptive_dllm.errors import AdllmError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise AdllmError("lm-eval is not installed; pip install 'adaptive-dllm[lm-eval]'") from err

__all__ = ["AdllmLM", "run_cli"]

logger = logging.getLogger(__name__)

SPARSE_KEYS = {"skip": "skip", "block_size": "block_size", "sparse_backend": "backend",
               "region": "region", "min_keep_ratio": "min_keep_ratio", "refresh": "refresh"}


@register_model("adllm")
class AdllmLM(LM):
    """lm-eval model: ``generate_until`` with ``ad.generate``, ``loglikelihood`` by Monte Carlo."""

    def __init__(self, pretrained: str | None = None, model: str | None = None, *,
                 device: str | None = None, dtype: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, seed: int = 0, mc_num: int = 128,
                 sparse: str | None = None, select: float = 0.3, importance: str | None = None,
                 **options: Any) -> None:
        super().__init__()
        from adaptive_dllm._distributed import init_ranks, rank_device
        from adaptive_dllm.generation.api import make_options
        from adaptive_dllm.models.checkpoints import load

        if pretrained is not None and model is not None and pretrained != model:
            raise AdllmError(f"model_args: pretrained={pretrained!r} and model={model!r} differ; "
                             "give one of them")
        self.batch_size = _positive_int("batch_size", 1 if batch_size == "auto" else batch_size)
        self.mc_num = _positive_int("mc_num", mc_num)
        self.seed = int(seed)
        sparse_options = {SPARSE_KEYS[k]: options.pop(k) for k in list(options) if k in SPARSE_KEYS}
        wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.ranks = init_ranks(wanted)
        self._rank, self._world_size = self.ranks.rank, self.ranks.world
        self._device = rank_device(self.ranks, wanted)
        self.model, self.tokenizer = load(pretrained or model, device=self._device, dtype=dtype)
        if self.tokenizer is None:
            raise AdllmError(f"model {pretrained or model!r} has no tokenizer; lm-eval needs text")
        self.options = dict(options)
        probe = {"gen_length": 32, **self.options}
        make_options(self.model.config.family, **probe)  # unknown/invalid option: one-line error
        self.sparse = _sparse_config(sparse, select, importance, sparse_options)
        self._source = str(getattr(self.model, "source", pretrained or model or "bundled"))

    # ------------------------------------------------------------------ distributed primitives

    @property
    def tokenizer_name(self) -> str:
        return self._source.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history,
                                                  add_generation_prompt=add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size <= 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size <= 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        from adaptive_dllm._distributed import barrier

        barrier(self.ranks)

    # ------------------------------------------------------------------ requests

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (by default) generation per request, batched, cut at the request's ``until``."""
        from adaptive_dllm.evaluation.runner import cut_at_stop
        from adaptive_dllm.generation.api import generate

        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            groups.setdefault(self._group_key(kwargs), []).append(i)
        for key, members in groups.items():
            options, until = self._generation_options(dict(key))
            ids = {i: self._context_ids(requests[i].args[0]) for i in members}
            # Equal-length contexts side by side: less padding, and exact sparse batches.
            members.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                out = generate(self.model, self.tokenizer, [ids[i] for i in batch],
                               sparse=self.sparse, seed=self.seed, **options)
                texts = out.text if isinstance(out.text, list) else [out.text]
                for i, text in zip(batch, texts, strict=True):
                    results[i] = cut_at_stop(text or "", until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return [r if r is not None else "" for r in results]

    def _context_ids(self, context: str) -> list[int]:
        """``context``'s ids with the tokenizer's BOS once: lm-eval's ``--apply_chat_template``
        hands over a context that already starts with the template's BOS text, which encoding
        with special tokens would double (the model never saw two BOS in training)."""
        plain = list(self.tokenizer.encode(context, add_special_tokens=False))
        bos = getattr(self.tokenizer, "bos_id", None)
        if bos is not None and plain[:1] == [bos]:
            return plain
        ids = list(self.tokenizer.encode(context))
        if not ids:
            raise AdllmError(f"lm-eval context {context!r} encodes to no tokens")
        return ids

    @staticmethod
    def _group_key(kwargs: Any) -> tuple:
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        return (("until", until), ("max_gen_toks", kwargs.get("max_gen_toks")))

    def _generation_options(self, key: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        options = dict(self.options)
        if "gen_length" not in options and key.get("max_gen_toks"):
            options["gen_length"] = int(key["max_gen_toks"])
        # generate() already cuts each text at the first EOS token.
        return options, tuple(s for s in key["until"] if s)

    def loglikelihood(self, requests: Sequence[Any],
                      disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Monte-Carlo masked log-likelihood of each continuation (``is_greedy`` is False)."""
        from adaptive_dllm.evaluation.runner import default_estimator, derive_seed

        estimate = default_estimator()
        out = []
        for req in requests:
            context, continuation = req.args
            prefix = self._context_ids(context) if context else []
            cont = self.tokenizer.encode(continuation, add_special_tokens=False)
            value = float(estimate(self.model, prefix, cont, mc_num=self.mc_num,
                                   batch_size=self.batch_size,
                                   seed=derive_seed(self.seed, context, continuation),
                                   sparse=self.sparse))
            out.append((value, False))
            self.cache_hook.add_partial("loglikelihood", req.args, (value, False))
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any],
                              disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "adllm does not implement loglikelihood_rolling: a diffusion LM has no left-to-right "
            "token likelihood to roll over a document (perplexity tasks such as wikitext need it); "
            "use `adllm eval nll` for held-out masked-token likelihood instead")


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise AdllmError(f"model_args: {name}={value!r} must be a positive integer")
    return number


def _sparse_config(mode: str | None, select: float, importance: str | None,
                   options: dict[str, Any]) -> Any:
    if mode in (None, "", "dense", "none"):
        if importance is not None or options:
            raise AdllmError("model_args: sparse options need sparse=uniform|adaptive")
        return None
    if mode not in ("uniform", "adaptive"):
        raise AdllmError(f"model_args: sparse={mode!r} must be dense, uniform or adaptive")
    from adaptive_dllm.sparsity.config import SparseConfig

    imp = None
    if mode == "adaptive":
        if importance is None:
            raise AdllmError("model_args: sparse=adaptive needs importance=FILE")
        from adaptive_dllm.importance.artifact import HeadImportance

        imp = HeadImportance.load(importance)
    elif importance is not None:
        raise AdllmError("model_args: importance= is only used by sparse=adaptive")
    return SparseConfig(select=float(select), importance=imp, **options)


def run_cli(argv: Sequence[str]) -> int:
    """Run lm-eval's command line with the ``adllm`` model registered (``adllm eval lm-eval``).

    ``--model adllm`` is added when no ``--model`` is given; ``--model-args`` style flags are
    accepted for lm-eval's ``--model_args`` spelling.
    """
    from lm_eval._cli import HarnessCLI

    args = [_underscore(a) for a in argv]
    if not args or args[0] not in ("run", "ls", "validate"):
        args = ["run", *args]
    if args[0] == "run" and not any(a in ("--model", "-M") or a.startswith("--model=")
                                    for a in args):
        args += ["--model", "adllm"]
    cli = HarnessCLI()
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli.execute(cli.parse_args())
    except ValueError as err:
        # lm-eval's own word for a task name it does not know; anything else is a real fault.
        if not str(err).startswith("Tasks not found"):
            raise
        raise AdllmError(f"lm-eval: {err}; list the known ones with `adllm eval lm-eval ls "
                         "tasks`, or add your task's folder with --include-path DIR") from None
    finally:
        sys.argv = saved
    return 0


def _underscore(arg: str) -> str:
    """``--model-args=x`` -> ``--model_args=x`` (lm-eval spells its flags with underscores)."""
    if not arg.startswith("--"):
        return arg
    flag, sep, value = arg.partition("=")
    return "--" + flag[2:].replace("-", "_") + sep + value
