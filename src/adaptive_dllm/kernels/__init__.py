"""Every Triton kernel of the package; the bottom layer (it imports nothing of ours but
``errors``).

- :mod:`.support`: block sizes, head-dim limit, launch options, availability, offset guard
  (importable without triton);
- :mod:`.tiles`: the shared ``@triton.jit`` steps;
- :mod:`.block_sparse`: block-sparse attention over a plan's indices (prefill regime);
- :mod:`.block_mass`: exact block attention mass (one-pass / two-pass);
- :mod:`.attend_and_score`: the fused build step, attention plus block logsumexps;
- :mod:`.decode_sparse`: few queries over a long K/V cache, kept blocks only (cached steps);
- :mod:`.elementwise`: RMSNorm, RoPE, SwiGLU for CUDA inference.

Modules other than :mod:`.support` import triton (``decode_sparse`` lazily, for its eager
reference): callers import them on first use.
"""
