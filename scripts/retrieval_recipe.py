"""Parts of the retrieval recipe (``scripts/train_retrieval.py``): training items, batches, the
length curriculum, run state (checkpoint + resume file) and the JSONL log.

Task items reuse the needle and question text of :mod:`adaptive_dllm.evaluation.tasks.retrieval`
(its ``_spec`` and ``_insert``), so that training and evaluation prompts have one layout, but are
sized directly in bytes and seeded from seeds outside :data:`TEST_SEEDS` only (every seed passes
:func:`check_train_seed`).

Shape legend: B rows, L sequence length (bytes).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptive_dllm.evaluation import data
from adaptive_dllm.evaluation.tasks._common import item_rng
from adaptive_dllm.evaluation.tasks.retrieval import KINDS, _insert, _spec, check_train_seed
from adaptive_dllm.models.checkpoints import save_checkpoint
from adaptive_dllm.models.tokenizer import ByteTokenizer
from adaptive_dllm.models.transformer import Transformer

ANSWER_TOKENS = 32  # the retrieval task's gen_length: the region the sampler fills
SHORTEST = 512


@dataclass(frozen=True)
class TrainItem:
    """One training sequence: ``ids`` (exactly the asked length), answer region from ``answer_start``."""

    ids: bytes
    answer_start: int
    kind: str
    seed: int
    target: str


def build_item(text: str, seed: int, length: int, *, kinds: tuple[str, ...] = KINDS,
               max_distractors: int = 6, max_hops: int = 5) -> TrainItem:
    """The training item of ``seed`` (outside :data:`TEST_SEEDS`), ``length`` bytes, from ``text``."""
    rng = item_rng(check_train_seed(seed), "retrieval-train")
    kind = rng.choice(kinds)
    budget = length - ANSWER_TOKENS
    offset = text.find("\n", rng.randrange(len(text) - budget)) + 1
    distractors, hops = rng.randint(1, max_distractors), rng.randint(2, max_hops)
    for _ in range(20):
        spec = _spec(kind, rng, rng.random(), distractors, hops)
        answer = f" {spec.answer}.\n".encode()
        head = f"{spec.intro}\n\n"
        tail = f"\n\n{spec.question}"
        fixed = len(_insert("", spec.needles)[0]) + len(head) + len(tail)
        if fixed + 64 > budget:  # short contexts hold fewer needles: draw again with fewer
            if distractors == 1 and hops == 2:
                raise ValueError(f"length {length} is too short for a {kind} item")
            distractors, hops = max(1, distractors - 1), max(2, hops - 1)
            continue
        filler = budget - fixed
        for _ in range(3):  # a needle after a filler that ends mid-line adds a line break: trim it
            prompt = f"{head}{_insert(text[offset : offset + filler], spec.needles)[0]}{tail}"
            if len(prompt) == budget:
                break
            filler -= len(prompt) - budget
        if all(prompt.count(u) == 1 for u in spec.unique):
            break
    else:  # pragma: no cover - needs a haystack full of 5- and 7-digit numbers
        raise ValueError(f"cannot place a unique {kind} answer for seed {seed}")
    ids = prompt.encode("ascii") + answer + bytes(ANSWER_TOKENS - len(answer))
    assert len(ids) == length, (len(ids), length)
    return TrainItem(ids=ids, answer_start=budget, kind=kind, seed=seed, target=spec.answer)


class ItemStream:
    """Training items from consecutive seeds ``data_seed, data_seed + 1, ...``, all outside TEST_SEEDS."""

    def __init__(self, text: str, *, data_seed: int, kinds: tuple[str, ...] = KINDS) -> None:
        if not text.isascii():
            raise ValueError("the training haystack must be ASCII (bytes = characters)")
        self.text, self.kinds, self.next_seed = text, kinds, check_train_seed(data_seed)

    def draw(self, length: int) -> TrainItem:
        seed, self.next_seed = self.next_seed, self.next_seed + 1
        return build_item(self.text, seed, length, kinds=self.kinds)


def make_batch(stream: ItemStream, windows: data.WindowSampler, rows: int, length: int,
               text_frac: float, rng: random.Random, gen: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, L) clean ids and answer_start (B,): 0 for plain-text rows, L - 32 for task rows."""
    n_text = int(text_frac * rows + rng.random())  # stochastic rounding keeps the share exact
    items = [stream.draw(length) for _ in range(rows - n_text)]
    eos = ByteTokenizer().eos_id
    task = torch.frombuffer(bytearray(b"".join(it.ids for it in items)) or bytearray(1),
                            dtype=torch.uint8)[: len(items) * length].view(-1, length).long()
    # the zero bytes after the answer are the end-of-text padding
    task[:, length - ANSWER_TOKENS:][task[:, length - ANSWER_TOKENS:] == 0] = eos
    x = torch.cat([task.to(device), windows.sample(n_text, length, gen)])
    starts = torch.tensor([length - ANSWER_TOKENS] * len(items) + [0] * n_text, device=device)
    return x, starts


def train_text(works: dict[str, bytes]) -> str:
    """The training works as one ASCII string (any other byte becomes '?'; Shakespeare has none)."""
    return "\n".join(w.decode("ascii", errors="replace").replace("\ufffd", "?") for w in works.values())


def curriculum(args: argparse.Namespace) -> list[int]:
    lengths, n = [], args.min_length
    while n <= args.max_length:
        lengths.append(n)
        n *= 2
    if not lengths or lengths[-1] != args.max_length:
        raise SystemExit(f"--max-length {args.max_length} must be --min-length {args.min_length} "
                         "times a power of two")
    return lengths


def stage_length(progress: float, lengths: list[int]) -> int:
    """The curriculum's length at ``progress`` in [0, 1): equal shares, shortest first."""
    return lengths[min(len(lengths) - 1, int(progress * len(lengths)))]


def step_length(stage: int, mix_short: float, rng: random.Random) -> int:
    """``stage``, or with probability ``mix_short`` a random shorter power of two (>= 512)."""
    shorter = [2**k for k in range(int(math.log2(SHORTEST)), int(math.log2(stage)))]
    return rng.choice(shorter) if shorter and rng.random() < mix_short else stage


def save_state(model: Transformer, opt: torch.optim.Optimizer, out: Path, config_json: dict,
               extra: dict) -> None:
    """``final/`` (bf16 checkpoint) and ``resume.pt`` (moments in bf16: it must come back through
    the device's 16 MiB-per-file channel in a few parts), each written atomically."""
    save_checkpoint(copy.deepcopy(model).to(torch.bfloat16), out / "final", config_json)
    opt_state = opt.state_dict()  # its per-parameter dicts are the optimizer's own: copy, never cast
    opt_state["state"] = {i: {k: v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v
                              for k, v in st.items()} for i, st in opt_state["state"].items()}
    tmp = out / "resume.pt.tmp"
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "opt": opt_state, **extra}, tmp)
    os.replace(tmp, out / "resume.pt")


def load_resume(model: Transformer, opt: torch.optim.Optimizer, path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.pop("model"))
    opt_state = state.pop("opt")
    for s in opt_state["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            s[key] = s[key].float()
    opt.load_state_dict(opt_state)
    return state


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class Log:
    """``train_log.jsonl``: one JSON object a line, flushed as written (appended on resume)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.file = open(path, "a" if resume else "w")  # noqa: SIM115 - closed at the end of main

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, event: str, **fields: object) -> None:
        self.file.write(json.dumps({"event": event, **fields}) + "\n")
        self.file.flush()
