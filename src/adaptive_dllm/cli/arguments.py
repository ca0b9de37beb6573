"""Options and checks shared by the ``adllm`` commands: one spelling per concept, and every
command refuses the same bad values with the same one-line message before doing any work.

- :class:`OneLineParser`: argparse errors as one line (``adllm generate: error: ...``), exit 2.
- ``type=`` converters: :func:`seed`, :func:`positive_int`, :func:`device`, :func:`gqa_unit`.
- Option groups (``tests/cli/test_vocabulary.py`` checks every command spells them alike):
  :func:`add_model_args` / :func:`load_model` (a hub id is fetched only with ``--download``),
  :func:`add_sampler_args` / :func:`sampler_options`, :func:`add_sparse_args` /
  :func:`sparse_config_from_args`, :func:`add_quiet`. A command takes a whole group or the
  options it names (``only=``) with its own defaults (``defaults=``); flags, dests, choices and
  help texts stay the group's.
- Checks and helpers: :func:`check_steps`, :func:`refuse_unused`, :func:`out_stream`. Plots:
  :mod:`adaptive_dllm.cli.plots`; list-valued options: :mod:`adaptive_dllm.cli.lists`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from adaptive_dllm._checks import check_seed
from adaptive_dllm.errors import AdllmError

if TYPE_CHECKING:
    from adaptive_dllm.sparsity.config import SparseConfig

#: --steps is at most this many times the generated tokens: beyond one token per step extra steps
#: change little, 16x leaves room for experiments, and a typo (100000000) fails at once.
MAX_STEPS_PER_TOKEN = 16


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seed(text: str) -> int:
    """``type=`` for seeds: an integer in [0, 2**64 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    try:
        return check_seed(value)  # the library's rule, so the CLI and generate() agree
    except AdllmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}")
    return value


def positive_int(text: str) -> int:
    """``type=`` for lengths and counts: an integer of at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """``type=`` for counts where 0 means "none": an integer of at least 0."""
    return _int_at_least(text, 0)


def positive_seconds(text: str) -> float:
    """``type=`` for time limits: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} seconds must be a finite number above 0")
    return value


def device(text: str) -> str:
    """``type=`` for ``--device``: cpu, cuda, cuda:N or mps, and present on this machine."""
    from adaptive_dllm.models.checkpoints import resolve_device

    if text.strip().lower() == "gpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not a torch device; "
                                         "use --device cuda (or cuda:N for the N-th GPU)")
    try:
        resolve_device(text)
    except AdllmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_model_args(p: argparse.ArgumentParser, *, only: Iterable[str] | None = None) -> None:
    """The ``model`` group: ``--model DIR``, ``--download``, ``--device``, ``--dtype`` (or ``only``)."""
    from adaptive_dllm.models.checkpoints import DTYPES

    specs = {"model": dict(metavar="DIR", help="checkpoint directory, or a bundled model: tiny "
                           "(Shakespeare, the default) or retrieval (long-context retrieval); an "
                           "existing directory of that name wins (write ./retrieval to be explicit); "
                           "a Hugging Face hub id (org/name) only with --download"),
             "download": dict(action="store_true", help="fetch --model from the Hugging Face hub "
                              "when it is not a local directory"),
             "device": dict(type=device, help="cpu, cuda, cuda:N or mps (default: cuda when "
                            "available, else cpu)"),
             "dtype": dict(choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")}
    g = p.add_argument_group("model")
    for name in specs if only is None else only:
        g.add_argument(f"--{name}", **specs[name])


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, tokenizer) as :func:`add_model_args`'s options say."""
    from adaptive_dllm.models.checkpoints import load

    return load(args.model, device=args.device, dtype=args.dtype,
                download=getattr(args, "download", False))


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet``."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (they are printed every ~10%% or 30 s)")


def refuse_unused(args: argparse.Namespace, defaults: dict[str, Any], *, why: str,
                  instead: str) -> None:
    """Refuse the options among ``defaults`` (dest -> parser default) that were set away from
    their default: this run will not read them, and dropping them silently would mislead. A value
    equal to the default cannot be told from an absent option, and changes nothing."""
    given = [f"--{dest.replace('_', '-')}" for dest, default in defaults.items()
             if getattr(args, dest) != default]
    if given:
        raise AdllmError(f"{', '.join(given)}: {why}; drop {'it' if len(given) == 1 else 'them'} "
                         f"or {instead}")


def check_steps(steps: int | None, gen_length: int, *, flag: str = "--steps") -> None:
    """Refuse ``steps`` outside [1, MAX_STEPS_PER_TOKEN * gen_length] (None = the default)."""
    if steps is None:
        return
    limit = MAX_STEPS_PER_TOKEN * gen_length
    if not 1 <= steps <= limit:
        raise AdllmError(f"{flag} {steps} must be in [1, {limit}] ({MAX_STEPS_PER_TOKEN} x the "
                         f"{gen_length} generated tokens); more steps than tokens add no quality")


def join_ranks(args: argparse.Namespace) -> Any:
    """Join a torchrun job, if any (HeadIG shards its examples); this rank's device in args."""
    import torch

    from adaptive_dllm._distributed import init_ranks, rank_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = init_ranks(device)
    args.device = str(rank_device(ranks, device))
    return ranks


def out_stream(args: argparse.Namespace) -> Any:
    """Human-readable lines go to stderr when --json owns stdout."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


# -- option groups -----------------------------------------------------------------------------
# One entry per concept: name (= dest) -> (flags, add_argument keywords, "(default NOTE)" shown
# while the library default (None) applies; a command's own default shows "(default: VALUE)").
_Spec = tuple[tuple[str, ...], dict[str, Any], str | None]


def gqa_unit(text: str) -> str:
    """``type=`` for ``--gqa``: ``q`` is the old spelling of ``query`` (still accepted)."""
    return "query" if text == "q" else text


def _sampler_specs() -> dict[str, _Spec]:
    from typing import get_args

    from adaptive_dllm.generation.cache import CacheMode
    from adaptive_dllm.generation.dream import Algorithm
    from adaptive_dllm.generation.llada import Remasking

    return {
        "steps": (("--steps",), dict(type=int, metavar="N", help="denoising steps, 1 to 16 x the "
                                     "generated tokens"), "--gen-length, one token per step"),
        "gen_length": (("--gen-length",), dict(type=positive_int, metavar="N",
                                               help="tokens to generate"),
                       str(default_gen_length())),
        "block_length": (("--block-length",), dict(
            type=positive_int, metavar="N", help="semi-autoregressive block (LLaDA; Dream: "
            "decode block by block); 32 often reads better on small models"),
            "the whole generation, as upstream"),
        "temperature": (("--temperature",), dict(type=float, metavar="T",
                                                 help="sampling temperature, 0 = greedy"), "0"),
        "remasking": (("--remasking",), dict(choices=get_args(Remasking), help="LLaDA remasking"),
                      "low_confidence"),
        "cfg_scale": (("--cfg-scale",), dict(type=float, metavar="S",
                                             help="LLaDA classifier-free guidance"), "0"),
        "alg": (("--alg",), dict(choices=get_args(Algorithm), help="Dream unmasking order"),
                "maskgit_plus"),
        "alg_temp": (("--alg-temp",), dict(type=float, metavar="T",
                                           help="Dream position-sampling temperature"), "off"),
        "eps": (("--eps",), dict(type=float, help="Dream final noise level"), "1e-3"),
        "top_p": (("--top-p",), dict(type=float, metavar="P", help="Dream nucleus filtering"),
                  "off"),
        "top_k": (("--top-k",), dict(type=int, metavar="K", help="Dream top-k filtering"), "off"),
        "cache": (("--cache",), dict(choices=get_args(CacheMode), help="approximate K/V cache "
                                     "refreshed once per block (docs/cache.md)"), "none"),
        "threshold": (("--threshold",), dict(type=float, metavar="TAU", help="parallel decoding: "
                                             "commit every token more confident than TAU"), "off"),
        "cuda_graphs": (("--cuda-graphs",), dict(action=argparse.BooleanOptionalAction, help=(
            "with --cache on a GPU, replay each block's cached steps from one CUDA graph "
            "(docs/cache.md)")), "on"),
        "fast": (("--fast",), dict(action="store_true", help=(
            f"speed preset: {_fast_text()} (an explicit --cache or --threshold wins; "
            "measured in docs/fidelity.md)")), "off"),
    }


def _fast_text() -> str:
    from adaptive_dllm.generation.cache import FAST_OPTIONS

    return " ".join(f"--{name} {value}" for name, value in FAST_OPTIONS.items())


def default_gen_length() -> int:
    """The samplers' own ``gen_length`` default, so the CLI never differs from ``generate``."""
    import dataclasses

    from adaptive_dllm.generation.dream import DreamOptions
    from adaptive_dllm.generation.llada import LladaOptions

    defaults = {f.default for cls in (LladaOptions, DreamOptions)
                for f in dataclasses.fields(cls) if f.name == "gen_length"}
    return defaults.pop() if len(defaults) == 1 else max(defaults)


#: Old spellings still parsed, hidden from --help: flag -> the option name it stands for.
_HIDDEN_ALIASES = {"--max-new-tokens": "gen_length", "--gqa-unit": "gqa"}


def _add_group(p: argparse.ArgumentParser, title: str, description: str | None,
               specs: dict[str, _Spec], only: Iterable[str] | None,
               defaults: dict[str, Any] | None, notes: dict[str, str] | None = None) -> Any:
    names = list(specs) if only is None else list(only)
    unknown = [n for n in [*names, *(defaults or {})] if n not in specs]
    if unknown:  # a programming error in a command, not a user error
        raise ValueError(f"no {title!r} option(s) {unknown}; known: {', '.join(specs)}")
    g = p.add_argument_group(title, description if only is None else None)
    for name in names:
        flags, kwargs, note = specs[name]
        note = (notes or {}).get(name, note)
        kwargs = dict(kwargs)
        if defaults and name in defaults:
            kwargs["default"] = defaults[name]
            kwargs["help"] += " (default: %(default)s)"
        else:
            kwargs["default"] = None
            kwargs["help"] += f" (default {note})" if note else ""
        g.add_argument(*flags, dest=name, **kwargs)
        for alias, target in _HIDDEN_ALIASES.items():
            if target == name:
                hidden = {k: v for k, v in kwargs.items() if k not in ("help", "metavar")}
                g.add_argument(alias, dest=name, help=argparse.SUPPRESS,
                               **{**hidden, "default": argparse.SUPPRESS})
    return g


def add_sampler_args(p: argparse.ArgumentParser, *, only: Iterable[str] | None = None,
                     defaults: dict[str, Any] | None = None) -> Any:
    """The ``sampler`` group (all of it, or the options named in ``only``): ``--steps``,
    ``--gen-length``, ``--block-length``, ``--temperature``, LLaDA's ``--remasking`` and
    ``--cfg-scale``, Dream's ``--alg``, ``--alg-temp``, ``--eps``, ``--top-p``, ``--top-k``,
    and ``--cache``, ``--threshold``, ``--cuda-graphs``, ``--fast``. Unset options are None (the
    sampler's own default) unless ``defaults`` gives the command's."""
    return _add_group(p, "sampler", "An option the model's sampler does not have is an error.",
                      _sampler_specs(), only, defaults)


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options the user set (not None), as ``generate()`` keywords; ``--fast``
    fills in those of :data:`~adaptive_dllm.generation.cache.FAST_OPTIONS` not given."""
    from adaptive_dllm.generation.cache import FAST_OPTIONS, threshold_clashes

    options = {name: getattr(args, name) for name in _sampler_specs()
               if name != "fast" and getattr(args, name, None) is not None}
    if not getattr(args, "fast", False):
        return options
    if "threshold" not in options:  # the preset's threshold: name --fast in any clash with it
        flags = {"steps": "--steps", "remasking": f"--remasking {options.get('remasking')}",
                 "alg": "--alg origin", "alg_temp": "--alg-temp"}
        clash = [flags[name] for name in threshold_clashes(options)]
        if clash:
            raise AdllmError(f"--fast sets --threshold {FAST_OPTIONS['threshold']}, which runs "
                             f"each block until it is unmasked, most confident first; "
                             f"{', '.join(clash)} cannot go with it: drop --fast or {clash[0]}")
    return {**FAST_OPTIONS, **options}


def _sparse_specs(backends: Iterable[str] | None) -> dict[str, _Spec]:
    from typing import get_args

    from adaptive_dllm.attention.reference import REFERENCE_BLOCK_SIZES
    from adaptive_dllm.sparsity.config import BLOCK_SIZES, BackendName, SparseConfig

    d = SparseConfig()
    sizes = ", ".join(map(str, BLOCK_SIZES))
    choices = tuple(backends or get_args(BackendName))
    return {
        "sparse": (("--sparse",), dict(choices=("uniform", "adaptive"), help=(
            "uniform: every head keeps the same share of key blocks (SparseD); adaptive: shares "
            "follow --importance")), "dense attention"),
        "select": (("--select",), dict(type=float, metavar="S", help="mean fraction of key "
                                       "blocks kept, in (0, 1]; 1 = dense"), f"{d.select:g}"),
        "skip": (("--skip",), dict(type=float, metavar="K", help="fraction of steps run dense "
                                   "before the plan is built"), f"{d.skip:g}"),
        "block_size": (("--block-size",), dict(
            type=int, choices=REFERENCE_BLOCK_SIZES, metavar="B",
            help=f"block size in tokens: {sizes} (also 8, 256, 512 with --sparse-backend "
                 "reference or gather)"), str(d.block_size)),
        "importance": (("--importance",), dict(metavar="FILE", help=(
            "head importance file (adllm importance) for adaptive sparse attention")), None),
        "min_keep_ratio": (("--min-keep-ratio",), dict(type=float, metavar="R", help=(
            "floor on every head's keep ratio")), f"{d.min_keep_ratio:g}"),
        "region": (("--region",), dict(choices=("separate", "joint"), help=(
            "budget prompt and generation keys separately or jointly")), d.region),
        "gqa": (("--gqa",), dict(type=gqa_unit, choices=("kv", "query"), help=(
            "allocation unit: one budget per KV head or per query head")), d.gqa),
        "sparse_backend": (("--sparse-backend",), dict(choices=choices, help="sparse kernel: " + (
            "; ".join(f"{name}: {_BACKEND_HELP[name]}" for name in choices))), d.backend),
        "refresh": (("--refresh",), dict(choices=("block", "never"), help=(
            "rebuild the plan at every later LLaDA block, or never (SparseD)")), d.refresh),
        "estimator": (("--estimator",), dict(choices=("exact", "pooled"), help=(
            "block scores: exact attention mass or pooled q/k estimate")), d.estimator),
        "build_kernel": (("--build-kernel",), dict(choices=("fused", "separate"), help=(
            "build step on a GPU: one attention kernel that also scores blocks (fused) or "
            "dense attention then a scoring kernel (separate)")), d.build_kernel),
    }


_BACKEND_HELP = {"auto": "the triton kernel on a GPU where sparse pays off, dense otherwise",
                 "triton": "the project's Triton kernel (CUDA)", "flex": "FlexAttention",
                 "gather": "gathers the kept key blocks, any device (the fast sparse path on "
                           "a CPU)",
                 "reference": "eager, any device (slow; for checks)"}

#: Sparse option -> SparseConfig field (the same name but for the backend).
_SPARSE_FIELDS = {name: "backend" if name == "sparse_backend" else name for name in (
    "select", "skip", "block_size", "min_keep_ratio", "region", "gqa", "sparse_backend",
    "estimator", "refresh", "build_kernel")}


def add_sparse_args(p: argparse.ArgumentParser, *, only: Iterable[str] | None = None,
                    defaults: dict[str, Any] | None = None,
                    backends: Iterable[str] | None = None,
                    notes: dict[str, str] | None = None) -> Any:
    """The ``sparse attention`` group (all of it, or the options named in ``only``):
    ``--sparse``, ``--select``, ``--skip``, ``--block-size``, ``--importance``,
    ``--min-keep-ratio``, ``--region``, ``--gqa``, ``--sparse-backend`` (``backends`` narrows
    its choices), ``--refresh``, ``--estimator``, ``--build-kernel``. Unset options are None (the
    :class:`~adaptive_dllm.sparsity.config.SparseConfig` default) unless ``defaults`` says;
    ``notes`` replaces the "(default ...)" text of an option the command resolves itself."""
    return _add_group(
        p, "sparse attention", "Block-sparse attention after the first --skip fraction of steps "
        "(SparseD schedule). Without --sparse, attention is dense.", _sparse_specs(backends),
        only, defaults, notes)


def sparse_config_from_args(args: argparse.Namespace) -> SparseConfig | None:
    """The SparseConfig the sparse flags describe, or None without ``--sparse``.

    Raises:
        AdllmError: sparse flags without ``--sparse``, ``adaptive`` without ``--importance``,
            ``uniform`` with it, an unreadable importance file, or an invalid value.
    """
    from adaptive_dllm.sparsity.config import SparseConfig

    mode = getattr(args, "sparse", None)
    given = {name: getattr(args, name, None) for name in (*_SPARSE_FIELDS, "importance")}
    given = {k: v for k, v in given.items() if v is not None}
    if mode is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise AdllmError(f"{flags} only apply with --sparse uniform|adaptive")
        return None
    importance = None
    if mode == "adaptive":
        if "importance" not in given:
            raise AdllmError("--sparse adaptive needs --importance FILE (from `adllm importance`)")
        from adaptive_dllm.importance.artifact import HeadImportance

        importance = HeadImportance.load(given["importance"])
    elif "importance" in given:
        raise AdllmError("--importance is only used by --sparse adaptive (uniform ignores it)")
    options = {field: given[name] for name, field in _SPARSE_FIELDS.items() if name in given}
    return SparseConfig(importance=importance, **options)
