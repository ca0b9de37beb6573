"""The denoising history of a generation: as JSON, and as an animation.

Shape legend:
    F frames (forwards + 1: the state before every forward, then the final one), B batch,
    G generated tokens.

Both writers are atomic (:func:`adaptive_dllm._io.atomic_write`): a reader never sees a
half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adaptive_dllm._io import atomic_write, check_output_path, write_json


def history_record(history: torch.Tensor, *, mask_id: int,
                   decode: Callable[[list[int]], str] | None = None) -> dict[str, Any]:
    """JSON-ready history: ``frames`` (F, B, G) token ids, ``mask_id``, and with ``decode`` the
    text of every frame (mask tokens shown as ``_``)."""
    frames = history.tolist()
    record: dict[str, Any] = {"mask_id": mask_id, "shape": list(history.shape),
                              "frames": frames}
    if decode is not None:
        record["texts"] = [[_render(row, mask_id, decode) for row in frame] for frame in frames]
    return record


def write_history_json(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Write ``record`` (from :func:`history_record`) atomically as strict JSON, one line."""
    write_json(check_output_path(path, flag="history file"), record, indent=None)


def write_history_gif(path: str | os.PathLike[str], history: torch.Tensor, *, mask_id: int,
                      decode: Callable[[list[int]], str] | None = None, row: int = 0,
                      fps: int = 8) -> None:
    """Animate row ``row`` of the (F, B, G) history: one frame per state, a cell per generated
    position (grey while masked, coloured by the step that committed it), the text as title."""
    import matplotlib
    from matplotlib.animation import PillowWriter
    from matplotlib.figure import Figure

    states = history[:, row].cpu()  # (F, G); a GPU run's history is drawn on the host
    masked = states == mask_id
    # Step that committed each position (-1 while masked): first frame where it is unmasked.
    committed = torch.where(masked, len(states), torch.arange(len(states))[:, None]).amin(0)
    G = states.shape[1]
    width = min(G, 32)
    rows = -(-G // width)
    fig = Figure(figsize=(8, 1.2 + 0.35 * rows))  # no pyplot: no global backend switch
    ax = fig.subplots()
    writer = PillowWriter(fps=fps)
    # Masked (and padding) cells: light grey.
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    check_output_path(path, flag="history file")
    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        tmp_gif = Path(tmp) / "history.gif"
        with writer.saving(fig, str(tmp_gif), dpi=80):
            for i in range(len(states)):
                grid = torch.where(masked[i], float("nan"), committed.float())
                grid = torch.nn.functional.pad(grid, (0, rows * width - G), value=float("nan"))
                ax.clear()
                ax.imshow(grid.view(rows, width).numpy(), cmap=cmap, vmin=0,
                          vmax=len(states), aspect="auto")
                ax.set_xticks([])
                ax.set_yticks([])
                title = f"step {i} / {len(states) - 1}"
                if decode is not None:
                    text = _render(states[i].tolist(), mask_id, decode).replace("\n", " ")
                    title += "\n" + (text[:90] + "..." if len(text) > 90 else text)
                ax.set_title(title, fontsize=8, loc="left")
                writer.grab_frame()
        with atomic_write(path, "wb") as handle:
            handle.write(tmp_gif.read_bytes())


def _render(ids: list[int], mask_id: int, decode: Callable[[list[int]], str]) -> str:
    """Decode ``ids`` with every mask token shown as ``_``."""
    out, run = [], []
    for t in ids:
        if t == mask_id:
            if run:
                out.append(decode(run))
                run = []
            out.append("_")
        else:
            run.append(t)
    if run:
        out.append(decode(run))
    return "".join(out)
