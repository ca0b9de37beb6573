"""The Triton kernels, compiled for an H100 (sm_90) on the CPU, fit its shared memory.

Triton compiles for a GPU target without a GPU (its bundled ptxas does the assembly), so the shared
memory each launch configuration needs is known here. float32 tiles at block 128 need fewer
pipeline stages than bf16 ones: with the bf16 stages they would not launch (a review found this).
"""

from __future__ import annotations

import pytest
import torch

HOPPER_SHARED_BYTES = 232448  # 227 KiB per block on an H100


def _compile(fn, pointers, constexprs, options):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {n: "constexpr" if n in constexprs else
                 pointers.get(n, "fp32" if n == "qk_scale" else "i32") for n in fn.arg_names}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs", [64, 128])
def test_launch_configurations_fit_hopper_shared_memory(dtype, bs):
    pytest.importorskip("triton")
    from adaptive_dllm.kernels.attend_and_score import _attend_block_lse_kernel, fused_num_stages
    from adaptive_dllm.kernels.block_sparse import _sparse_attention_kernel
    from adaptive_dllm.kernels.support import BLOCK_SPARSE_LAUNCH

    t = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    desc = f"tensordesc<{t}[1,1,{bs},128]>"
    common = {"Q": "*" + t, "VALID": "*i8", "OUT": "*" + t}
    try:
        used = []
        for tma in (False, True):
            kv = {"K": desc, "V": desc} if tma else {"K": "*" + t, "V": "*" + t}
            k = _compile(_sparse_attention_kernel, {**common, **kv, "IDX": "*i32", "CNT": "*i32"},
                         dict(HEAD_DIM=128, HAS_VALID=not tma, USE_TMA=tma, BS=bs, DP=128),
                         BLOCK_SPARSE_LAUNCH[bs].for_dtype(bs, dtype.itemsize))
            used.append(k.metadata.shared)
        k = _compile(_attend_block_lse_kernel,
                     {**common, "K": "*" + t, "V": "*" + t, "BUF": "*fp32"},
                     dict(HEAD_DIM=128, HAS_VALID=True, BM=128, BS=bs, DP=128),
                     {"num_warps": 8, "num_stages": fused_num_stages(bs, dtype)})
        used.append(k.metadata.shared)
    except (ImportError, RuntimeError) as err:  # no sm_90 toolchain in this triton build
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    assert max(used) <= HOPPER_SHARED_BYTES, used
