"""The progress display: live bars on a terminal, plain lines elsewhere, nothing when quiet, a batch level."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from rich.console import Console

from engine.display import ProgressDisplay
from engine.run.events import Evaluated, IterationDone, Prepared
from engine.run.records import TransferResult


def console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120, color_system=None)


def events(snapshot_dir: Path):
    yield Prepared(64, 48, "CPUExecutionProvider", 1.25)
    for i in range(1, 4):
        yield Evaluated(i, 6, 1000.0 / i)
    yield IterationDone(1, 333.0, 3.0, 320.0, 10.0, 3, 0.5, snapshot_dir / "cat_at_iteration_1.png", 64, 48)
    for i in range(4, 8):  # scipy may overrun maxfun by one: 7 of 6
        yield Evaluated(i, 6, 1000.0 / i)
    yield IterationDone(2, 142.0, 2.0, 130.0, 10.0, 4, 0.6, snapshot_dir / "cat_at_iteration_2.png", 64, 48)


def result(out: Path) -> TransferResult:
    its = [IterationDone(1, 333.0, 3.0, 320.0, 10.0, 3, 0.5, out / "cat_at_iteration_1.png"),
           IterationDone(2, 142.0, 2.0, 130.0, 10.0, 4, 0.6, out / "cat_at_iteration_2.png")]
    import numpy as np
    return TransferResult(np.zeros((1, 1, 3), np.uint8), out / "cat.png", out / "cat.json", its,
                          "CPUExecutionProvider", 2.5)


def render(terminal: bool, quiet: bool = False) -> str:
    c = console(terminal)
    out = Path("out")
    with ProgressDisplay(quiet, console=c) as display:
        for event in events(out):
            display(event)
        display.summary(result(out))
    return c.file.getvalue()


def test_a_terminal_gets_a_live_bar_with_loss_and_eta_and_lines_above_it():
    text = render(terminal=True)
    assert "evaluations" in text and "eta" in text
    assert "3/6" in text and "loss 3.333e+02" in text  # evaluations so far and the current loss
    assert "6/6" in text and "7/6" not in text          # the overrun evaluation stops at the total
    assert "iteration 1: loss 3.330e+02 (content 3.000e+00, style 3.200e+02, tv 1.000e+01)" in text
    assert "64x48 px on CPUExecutionProvider, ready in 1.2 s" in text


def test_not_a_terminal_gets_plain_lines_and_a_summary_of_what_was_written():
    lines = render(terminal=False).splitlines()
    assert lines[0] == "64x48 px on CPUExecutionProvider, ready in 1.2 s"
    assert lines[1].startswith("iteration 1: loss 3.330e+02") and lines[1].endswith(
        "3 evals, 0.5 s, saved out/cat_at_iteration_1.png")
    assert lines[2].startswith("iteration 2: loss 1.420e+02")
    assert lines[3] == ("done: loss 1.420e+02 (content 2.000e+00, style 1.300e+02, tv 1.000e+01) after 2 iterations, "
                        "7 evaluations, 2.5 s on CPUExecutionProvider")
    assert lines[4] == ("wrote image out/cat.png, 2 snapshots (out/cat_at_iteration_1.png ... cat_at_iteration_2.png), "
                        "record out/cat.json")
    assert len(lines) == 5  # no bar, no evaluation lines


def test_a_run_its_tol_stopped_says_so_and_how_to_run_every_iteration():
    c = console(False)
    with ProgressDisplay(False, console=c) as display:
        display.summary(dataclasses.replace(result(Path("out")), planned_iterations=50))
    assert ("after 2 iterations of 50 (the picture had stopped changing: an iteration lowered the loss by less "
            "than --tol; --tol 0 runs every one), 7 evaluations") in c.file.getvalue()


def test_quiet_shows_nothing_even_on_a_terminal():
    assert render(terminal=True, quiet=True) == ""


def test_the_last_snapshot_is_kept_for_an_interrupt_message():
    display = ProgressDisplay(console=console(False))
    for event in events(Path("out")):
        display(event)
    assert display.last_snapshot == Path("out/cat_at_iteration_2.png")


def test_a_batch_shows_jobs_done_failed_and_the_current_job():
    c = console(terminal=True)
    with ProgressDisplay(console=c) as display:
        display.start_batch(3)
        display.start_job("cat")
        for event in events(Path("out")):
            display(event)
        display.finish_job("cat")
        display.start_job("dog")
        display(Evaluated(1, 6, 5.0))
        display.finish_job("dog", "cannot read image 'dog.jpg': no such file, check the path")
        display.start_job("owl")
    text = c.file.getvalue()
    assert "3 jobs" in text
    assert "cat: iteration 1: loss" in text and "cat: done" in text
    assert "dog: failed: cannot read image 'dog.jpg'" in text
    assert "jobs" in text and "2/3" in text and "1 failed, owl" in text


def test_a_batch_not_on_a_terminal_is_plain_lines():
    c = console(terminal=False)
    with ProgressDisplay(console=c) as display:
        display.start_batch(2)
        display.start_job("cat")
        display.finish_job("cat")
        display.start_job("dog")
        display.finish_job("dog", "boom")
    assert c.file.getvalue().splitlines() == ["2 jobs", "cat: done", "dog: failed: boom"]
