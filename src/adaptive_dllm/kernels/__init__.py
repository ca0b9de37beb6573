"""Every Triton kernel of the package; the bottom layer (it imports nothing of ours but
``errors``).

- :mod:`.support`: block sizes, head-dim limit, launch options, availability, offset guard
  (importable without triton);
- :mod:`.tiles`: the shared ``@triton.jit`` steps;
- :mod:`.block_sparse`: block-sparse attention over a plan's indices (prefill regime);
- :mod:`.block_mass`: exact block attention mass (one-pass / two-pass);
- :mod:`.attend_and_score`: the fused build step, attention plus block logsumexps;
- :mod:`.elementwise`: RMSNorm, RoPE, SwiGLU for CUDA inference.

A kernel for few queries over a long cache (the cached-step regime) belongs in
``decode_sparse.py`` beside these. Modules other than :mod:`.support` import triton: callers
import them on first use.
"""
