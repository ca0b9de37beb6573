"""``adllm`` with the toy tasks registered, for tests that start it in other processes
(``python -m torch.distributed.run ... toy_cli.py eval task toy ...``)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toy_tasks  # noqa: E402

from adaptive_dllm.cli import main  # noqa: E402
from adaptive_dllm.evaluation.tasks import base  # noqa: E402


def register() -> None:
    for name, kind in (("toy", "generate"), ("toychoice", "loglikelihood")):
        module = types.ModuleType(f"adaptive_dllm.evaluation.tasks.{name}")
        module.make_task = lambda kind=kind, **o: toy_tasks.make_task(kind=kind, **o)
        sys.modules[module.__name__] = module
        base.TASKS[name] = name


if __name__ == "__main__":
    register()
    sys.exit(main(sys.argv[1:]))
