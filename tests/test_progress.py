"""``adaptive_dllm._progress``: whole lines every ~10% or 30 s off a terminal, tqdm on one."""

from __future__ import annotations

import io

from adaptive_dllm._progress import LineProgress, NoProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_tenth_and_a_last_one():
    out = io.StringIO()
    bar = LineProgress(100, desc="work", unit="item", file=out, clock=Clock())
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("work: 10/100 item (10%)") and lines[-1].startswith("work: 100/100")


def test_a_line_every_30_seconds_when_progress_is_slow():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(1000, desc="slow", unit="step", file=out, clock=clock)
    for _ in range(3):
        clock.t += 31
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "about" in lines[-1] and "s left" in lines[-1]
    bar.set_postfix_str("uniform 0.3")
    bar.update(1)  # too soon for a line ...
    assert len(out.getvalue().splitlines()) == 3
    bar.close()  # ... but the last count is printed at the end, with the note
    bar.close()
    assert out.getvalue().splitlines()[-1].endswith("[uniform 0.3]")
    assert len(out.getvalue().splitlines()) == 4


def test_disabled_prints_nothing_and_tty_gets_tqdm():
    assert isinstance(progress_bar(10, desc="x", enabled=False), NoProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    bar = progress_bar(10, desc="x", file=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress_bar(10, desc="x", file=io.StringIO()), LineProgress)


def test_a_resumed_run_counts_from_initial_and_estimates_from_its_own_rate():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(100, desc="HeadIG", unit="step", file=out, clock=clock, initial=50)
    assert bar.n == 50
    clock.t = 10.0
    bar.update(10)  # 10 steps in 10 s (not 60): 40 left take about 40 s
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("HeadIG: 60/100 step (60%)") and "about 40 s left" in line


def test_note_prints_a_line_of_its_own():
    out = io.StringIO()
    bar = progress_bar(10, desc="x", file=out)
    bar.note("first example took 1.0 s")
    assert out.getvalue() == "first example took 1.0 s\n"
    progress_bar(10, desc="x", enabled=False).note("nothing")  # disabled: silent

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = progress_bar(10, desc="x", file=tty, initial=3)
    assert bar.n == 3
    bar.note("on the terminal")
    bar.close()
    assert "on the terminal" in tty.getvalue()


def test_each_line_is_flushed_when_written():
    class Recording(io.StringIO):
        def flush(self) -> None:  # what a reader of the log sees at each flush
            self.flushed.append(self.getvalue())

    out = Recording()
    out.flushed = []
    bar = LineProgress(10, desc="w", unit="it", file=out, clock=Clock())
    bar.update(1)
    bar.note("a note")
    assert out.flushed == ["w: 1/10 it (10%), 0 s elapsed\n",
                           out.getvalue()] and out.getvalue().endswith("a note\n")
