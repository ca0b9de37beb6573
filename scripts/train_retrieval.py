"""Train the long-context retrieval model (issue #13): byte-level masked diffusion on RULER-style tasks.

Model: the project's bidirectional transformer in LLaDA format (LLaDA objective and sampler),
grouped-query attention with 8 query heads on 2 key/value heads (4:1, so that the sparse path's
per-KV-head units are exercised), byte vocabulary (256 bytes + end-of-text 256 + mask 257), the
tiny model's tokenizer: lengths are exact in bytes and the haystack needs no trained tokenizer.

Data (every step the same number of tokens, ``--tokens-per-step``, in rows of one length):

* task rows (``1 - --text-frac``): ``instruction + haystack with needles + question`` of the four
  kinds of :mod:`adaptive_dllm.evaluation.tasks.retrieval` (needle/question text from the same
  code), then the answer region of ``ANSWER_TOKENS`` bytes the sampler fills at evaluation:
  `` 48213.\\n`` and end-of-text padding. The haystack is text of the *training* Shakespeare works
  (:func:`adaptive_dllm.evaluation.data.split_works`): the evaluation haystack (``heldout.txt``,
  the held-out works) is never seen. Item k uses seed ``--data-seed + k``; every seed passes
  :func:`check_train_seed`, so no item of :data:`TEST_SEEDS` can be generated.
* plain-text rows (``--text-frac``): windows of the training works, LLaDA pre-training loss.

Objective: LLaDA's (Nie et al. 2025). Plain rows: every byte masked with p = eps + (1 - eps) t,
t ~ U(0, 1) stratified over the batch. Task rows, SFT style: the prompt is never masked, answer
bytes are masked with p = a + (1 - a) t (a = ``--answer-mask-min``). Loss per row: masked
cross-entropy / p, divided by the row's maskable positions (L for plain rows, ANSWER_TOKENS for
task rows: an answer byte weighs L / 32 plain bytes), averaged over rows.

Length curriculum: the lengths are the powers of two from ``--min-length`` to ``--max-length``,
each given an equal share of the run (progress = steps done / ``--steps`` or minutes trained /
``--minutes``, whichever is further); a ``--mix-short`` share of steps uses a random shorter
length (from 512) so that short contexts stay in distribution. LR: warm-up, cosine by progress.

Output (``--out``): ``final/`` (config.json + bf16 model.safetensors, atomic, refreshed at every
eval), ``resume.pt`` (fp32 weights, AdamW moments in bf16, step and data counter),
``train_log.jsonl`` and ``eval.json`` (final held-out accuracy per length and kind: the
retrieval task with seed ``--final-seed``, its default generation settings, greedy).

Examples:
    # CPU smoke test, seconds
    python scripts/train_retrieval.py --device cpu --steps 4 --min-length 512 --max-length 512 \\
        --tokens-per-step 1024 --d-model 32 --n-layers 1 --eval-every 2 --eval-n 1 \\
        --eval-kinds passkey --final-lengths 512 --final-n 1
    # GPU: docs/retrieval_model.md (scripts/device_train_retrieval.sh)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from adaptive_dllm.bench.timing import git_commit
from adaptive_dllm.evaluation import data
from adaptive_dllm.evaluation.tasks.retrieval import KINDS, TEST_SEEDS, check_train_seed, make_task
from adaptive_dllm.generation.api import generate
from adaptive_dllm.models.checkpoints import load, load_model
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.tokenizer import ByteTokenizer
from adaptive_dllm.models.transformer import Transformer, fused_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the recipe's parts sit beside it
from retrieval_recipe import (  # noqa: E402
    ItemStream,
    Log,
    curriculum,
    device_name,
    load_resume,
    make_batch,
    save_state,
    stage_length,
    step_length,
    train_text,
)

MASK_EPS = 1e-3


def diffusion_loss(model: torch.nn.Module, x: torch.Tensor, answer_start: torch.Tensor, *,
                   mask_id: int, answer_mask_min: float, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Mean row loss of clean ids ``x`` (B, L); rows with ``answer_start`` > 0 are task rows."""
    B, L = x.shape
    u = torch.rand((), generator=gen, device=x.device)
    t = (u + torch.arange(B, device=x.device) / B) % 1.0  # stratified, (B,)
    is_task = answer_start > 0
    low = torch.where(is_task, answer_mask_min, MASK_EPS)
    p = low + (1 - low) * t  # (B,)
    maskable = torch.arange(L, device=x.device)[None] >= answer_start[:, None]  # (B, L)
    masked = (torch.rand((B, L), generator=gen, device=x.device) < p[:, None]) & maskable
    logits = get_family(model.config.family).align_logits(model(torch.where(masked, mask_id, x)))
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(B, L)
    row = (ce * masked / p[:, None]).sum(1) / maskable.sum(1)  # (B,)
    # Tensors, not floats: reading them waits for the device, so the loop does it only to log.
    parts = {"task": (row * is_task).sum() / is_task.sum().clamp_min(1),
             "text": (row * ~is_task).sum() / (~is_task).sum().clamp_min(1)}
    return row.mean(), parts


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warm-up over ``--warmup`` steps, then cosine to ``lr * min_lr_ratio`` by progress."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model: torch.nn.Module, tok: ByteTokenizer, *, length: int, n: int, seed: int,
             device: torch.device, kinds: tuple[str, ...] = KINDS,
             deadline: float | None = None) -> dict[str, dict[str, float]]:
    """``{kind: {"accuracy", "n"}}`` on the retrieval task's held-out items of ``length``.

    One prompt at a time (no padding mask, so CUDA runs flash attention), item i of every kind
    before item i + 1, so that a ``deadline`` (``time.perf_counter()`` value) cuts all kinds alike.
    """
    was_training = model.training
    model.eval()
    task = make_task(tokenizer=tok, length=length, n=n, seed=seed, kinds=kinds)
    scores: dict[str, list[float]] = {k: [] for k in kinds}
    # The Triton RMSNorm/RoPE/SwiGLU kernels are meant for a model in one dtype; the training
    # model is fp32 under bf16 autocast, so it evaluates with the eager code.
    mixed = device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    for i in range(n):
        if deadline is not None and time.perf_counter() > deadline:
            break
        for kind in kinds:
            item = task.item(kind, i)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed), fused_kernels(not mixed):
                text = generate(model, tok, item.prompt, **task.generation_defaults()).text
            scores[kind].append(task.score(item, [text])["correct"])
    model.train(was_training)
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in scores.items() if v}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("data and output")
    io.add_argument("--data", type=Path, default=data.DEV_CORPUS_DIR, help="folder of *_gut.txt works")
    io.add_argument("--out", type=Path, default=Path("runs/retrieval"), help="output folder")
    io.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt (weights, "
                    "optimizer, data counter); the schedule restarts over this run's budget")
    io.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                    help="start from a checkpoint's weights (fresh optimizer)")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=int, default=256)
    m.add_argument("--n-layers", type=int, default=8)
    m.add_argument("--n-heads", type=int, default=8)
    m.add_argument("--n-kv-heads", type=int, default=2)
    m.add_argument("--mlp-hidden", type=int, default=512)
    m.add_argument("--rope-theta", type=float, default=10_000.0)
    m.add_argument("--context", type=int, default=17408,
                   help="max_sequence_length in config.json: a 16k prompt (+2%%) and its answer fit")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="step budget")
    t.add_argument("--minutes", type=float, default=None, help="training-time budget (evals excluded)")
    t.add_argument("--min-length", type=int, default=1024)
    t.add_argument("--max-length", type=int, default=8192)
    t.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="end the run at this (total) step; the schedule still spans --steps")
    t.add_argument("--mix-short", type=float, default=0.2)
    t.add_argument("--tokens-per-step", type=int, default=262144)
    t.add_argument("--text-frac", type=float, default=0.15, help="share of plain-text rows")
    t.add_argument("--train-kinds", default=",".join(KINDS),
                   help="task kinds of the training rows (comma-separated)")
    t.add_argument("--answer-mask-min", type=float, default=0.3)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0, help="initialisation, masks and length draws")
    t.add_argument("--data-seed", type=int, default=TEST_SEEDS.stop,
                   help=f"seed of the first training item (>= {TEST_SEEDS.stop}: outside the test seeds)")
    t.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile, dynamic shapes (eager if it fails)")
    t.add_argument("--grad-checkpointing", action="store_true")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=int, default=200)
    e.add_argument("--eval-n", type=int, default=4, help="items per kind of the periodic eval")
    e.add_argument("--eval-seed", type=int, default=999_999, help="periodic eval items (not the card's)")
    e.add_argument("--final-lengths", default="4096,8192")
    e.add_argument("--final-n", type=int, default=100, help="items per kind and length, final eval")
    e.add_argument("--final-seed", type=int, default=0)
    e.add_argument("--eval-kinds", default=",".join(KINDS), help="kinds of both evaluations")
    e.add_argument("--final-max-minutes", type=float, default=None,
                   help="stop the final eval after this long (fewer items, counted in eval.json)")
    e.add_argument("--eval-only", action="store_true", help="no training: evaluate OUT/final")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None and not args.eval_only:
        p.error("give --steps or --minutes (or both: whichever ends first)")
    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and args.minutes <= 0):
        p.error(f"--steps {args.steps} / --minutes {args.minutes}: the budget must be positive")
    if not 0.0 <= args.text_frac < 1.0 or not 0.0 <= args.answer_mask_min < 1.0:
        p.error("--text-frac and --answer-mask-min must lie in [0, 1)")
    check_train_seed(args.data_seed)
    args.eval_kinds = tuple(k for k in args.eval_kinds.split(",") if k)
    args.train_kinds = tuple(k for k in args.train_kinds.split(",") if k)
    unknown = [k for k in args.eval_kinds + args.train_kinds if k not in KINDS]
    if unknown or not args.train_kinds:
        p.error(f"unknown or no task kinds {unknown}; choose from {', '.join(KINDS)}")
    return args


def model_config_json(args: argparse.Namespace) -> dict:
    tok = ByteTokenizer()
    return {"model_type": "llada", "block_type": "llama", "activation_type": "silu",
            "layer_norm_type": "rms", "d_model": args.d_model, "n_heads": args.n_heads,
            "n_kv_heads": args.n_kv_heads, "n_layers": args.n_layers,
            "mlp_hidden_size": args.mlp_hidden, "vocab_size": tok.vocab_size, "embedding_size": 264,
            "rope": True, "rope_theta": args.rope_theta, "rms_norm_eps": 1e-5,
            "max_sequence_length": args.context, "weight_tying": False, "include_bias": False,
            "mask_token_id": tok.mask_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "torch_dtype": "bfloat16", "adllm_tokenizer": "bytes"}


def init_weights(model: Transformer) -> None:
    """N(0, 0.02); projections into the residual stream scaled by 1/sqrt(2 n_layers); norms 1."""
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(param)
        else:
            std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(param, std=std)


def check_fused_attention(device: torch.device) -> None:
    """Fail fast unless SDPA runs this model's attention (GQA, no mask) with a fused kernel:
    PyTorch's math fallback would materialise (B, H, L, L) scores at 16k."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from adaptive_dllm.attention.api import attend

    q = torch.randn(1, 8, 512, 32, device=device, dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 512, 32, device=device, dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        attend(q, kv, kv)  # raises when no fused kernel can run it


def build_model(args: argparse.Namespace, config_json: dict, device: torch.device) -> Transformer:
    model = Transformer(get_family("llada").parse_config(config_json, {}))
    init_weights(model)
    if args.init_from is not None:
        source = load_model(args.init_from, device="cpu", dtype=torch.float32)
        # A longer context is the point of starting from a shorter-context model: RoPE has no
        # trained table, so only the limit in config.json changes.
        if replace(source.config, max_seq_len=model.config.max_seq_len) != model.config:
            raise SystemExit(f"--init-from {args.init_from}: its config {source.config} differs from "
                             f"this run's {model.config}")
        model.load_state_dict(source.state_dict())
    model.gradient_checkpointing = args.grad_checkpointing
    return model.to(device).train()


def final_eval(args: argparse.Namespace, device: torch.device, log: Log, summary: dict) -> dict:
    """Reload ``final/`` (bf16 weights; float32 on CPU), score the held-out items, write eval.json."""
    model, tok = load(args.out / "final", device=device)
    deadline = None if args.final_max_minutes is None else time.perf_counter() + 60 * args.final_max_minutes
    result = {**summary, "checkpoint": str(args.out / "final"), "dtype": str(next(model.parameters()).dtype),
              "seed": args.final_seed, "n_per_kind": args.final_n,
              "generation": {"gen_length": 32, "steps": 32, "block_length": 32, "temperature": 0.0},
              "results": {}, "seconds": {}}
    for length in [int(n) for n in args.final_lengths.split(",") if n]:
        start = time.perf_counter()
        cell = evaluate(model, tok, length=length, n=args.final_n, seed=args.final_seed, device=device,
                        kinds=args.eval_kinds, deadline=deadline)
        result["results"][str(length)] = cell
        result["seconds"][str(length)] = time.perf_counter() - start
        log.write("final_eval", length=length, results=cell, seconds=result["seconds"][str(length)])
        print(f"final eval {length}: " + "  ".join(f"{k} {v['accuracy']:.3f} ({v['n']})"
                                                   for k, v in cell.items()))
    tmp = args.out / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out / "eval.json")
    return result


def setup(args: argparse.Namespace, device: torch.device, *, command: str) -> dict:
    """Data, model, optimizer, log; restored from ``resume.pt`` with ``--resume``."""
    lengths = curriculum(args)
    train_works, heldout_works = data.split_works(data.read_works(args.data))
    stream = ItemStream(train_text(train_works), data_seed=args.data_seed, kinds=args.train_kinds)
    config_json = model_config_json(args)
    model = build_model(args, config_json, device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    done = {"step": 0, "next_seed": stream.next_seed, "tokens": 0, "train_seconds": 0.0}
    if args.resume:
        done.update(load_resume(model, opt, args.out / "resume.pt"))
        stream.next_seed = check_train_seed(done["next_seed"])
    log = Log(args.out / "train_log.jsonl", args.resume)
    log.write("start", args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              command=command, commit=git_commit(),
              n_params=n_params, device=device_name(device), torch=torch.__version__, lengths=lengths,
              train_works=list(train_works), heldout_works=list(heldout_works), resumed_from=done)
    print(f"model: {n_params:,} parameters ({2 * n_params / 2**20:.1f} MiB bf16); curriculum {lengths}; "
          f"first data seed {stream.next_seed}; device {device_name(device)}")
    return {"lengths": lengths, "stream": stream, "config_json": config_json, "model": model, "opt": opt,
            "done": done, "log": log,
            # the three poems are shorter than a long window: plain-text rows come from the plays
            "windows": data.WindowSampler({k: v for k, v in train_works.items() if len(v) >= args.max_length},
                                          args.max_length, device)}


def train(args: argparse.Namespace, device: torch.device, run: dict) -> dict:
    """The training loop until the step or time budget; returns the totals (resumed run included)."""
    model, opt, log, done, stream = run["model"], run["opt"], run["log"], run["done"], run["stream"]
    forward = torch.compile(model, dynamic=True) if args.compile else model
    gen = torch.Generator(device).manual_seed(args.seed + done["step"])
    rng = random.Random(f"{args.seed}:{done['step']}")
    step, tokens, t0, eval_s = 0, 0, time.perf_counter(), 0.0

    def train_seconds() -> float:  # wall time of this run without its evaluations
        return time.perf_counter() - t0 - eval_s

    def totals() -> dict:
        return {"step": done["step"] + step, "next_seed": stream.next_seed, "tokens": done["tokens"] + tokens,
                "train_seconds": done["train_seconds"] + train_seconds()}

    while (progress := max(step / args.steps if args.steps else 0.0,
                           train_seconds() / (60 * args.minutes) if args.minutes else 0.0)) < 1.0:
        if args.stop_after is not None and done["step"] + step >= args.stop_after:
            break
        stage = stage_length(progress, run["lengths"])
        length = step_length(stage, args.mix_short, rng)
        rows = max(1, args.tokens_per_step // length)
        x, starts = make_batch(stream, run["windows"], rows, length, args.text_frac, rng, gen, device)
        lr = lr_at(step, progress, args)
        for group in opt.param_groups:
            group["lr"] = lr
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, parts = diffusion_loss(forward, x, starts, mask_id=model.config.mask_id,
                                             answer_mask_min=args.answer_mask_min, gen=gen)
            loss.backward()
        except Exception as err:  # torch.compile failures surface here, in the first step
            if forward is model:
                raise
            print(f"torch.compile failed ({type(err).__name__}: {err}); continuing eagerly")
            log.write("compile_failed", error=f"{type(err).__name__}: {err}")
            forward = model
            opt.zero_grad(set_to_none=True)
            continue
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + rows * length
        if step == 1 or step % 10 == 0:  # the step runs ahead of the device in between
            losses = {k: v.item() for k, v in parts.items()}
            train_s = train_seconds()
            log.write("train", step=done["step"] + step, loss=loss.item(), task_loss=losses["task"],
                      text_loss=losses["text"], length=length, rows=rows, lr=lr,
                      grad_norm=float(grad_norm), progress=progress, train_seconds=train_s,
                      tokens_per_s=tokens / train_s)
        if step % args.eval_every == 0:
            loss_now, train_s, e0 = loss.item(), train_seconds(), time.perf_counter()
            acc = evaluate(model, ByteTokenizer(), length=stage, n=args.eval_n, seed=args.eval_seed,
                           device=device, kinds=args.eval_kinds)
            log.write("eval", step=done["step"] + step, length=stage, results=acc, train_seconds=train_s)
            print(f"step {done['step'] + step} ({train_s / 60:.1f} min, {tokens / train_s:,.0f} tok/s) "
                  f"loss {loss_now:.3f} eval at {stage}: "
                  + " ".join(f"{k} {v['accuracy']:.2f}" for k, v in acc.items()))
            save_state(model, opt, args.out, run["config_json"], totals())
            eval_s += time.perf_counter() - e0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = train_seconds()
    save_state(model, opt, args.out, run["config_json"], totals())
    log.write("end", **totals(), this_run={"steps": step, "tokens": tokens, "train_seconds": train_s})
    print(f"trained {step} steps ({tokens:,} tokens, {tokens / max(train_s, 1e-9):,.0f} tok/s) in "
          f"{train_s / 60:.1f} min; checkpoint in {args.out / 'final'}")
    return totals()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        check_fused_attention(device)
    if args.eval_only:
        with Log(args.out / "train_log.jsonl", resume=True) as log:
            final_eval(args, device, log, {"device": device_name(device), "torch": torch.__version__})
        return 0
    command = shlex.join(["python", "scripts/train_retrieval.py", *(sys.argv[1:] if argv is None else argv)])
    run = setup(args, device, command=command)
    total = train(args, device, run)
    if device.type == "cuda":
        total["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    with run["log"] as log:
        final_eval(args, device, log, {"device": device_name(device), "torch": torch.__version__, **total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
