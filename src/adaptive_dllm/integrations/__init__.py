"""Adapters to other evaluation frameworks (optional extras; import the submodule you need).

* :mod:`adaptive_dllm.integrations.lm_eval`: the ``adllm`` model of EleutherAI's
  lm-evaluation-harness (``pip install "adaptive-dllm[lm-eval]"``).
"""
