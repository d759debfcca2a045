"""Resume: per-iteration checkpoints, continuing a stopped run, refusing what does not match."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine.run.engine as run_engine
from engine import Engine, IterationDone, RunError
from engine.cli import app
from features_support import CONTENT, SHALLOW, STYLE, tiny_config

from conftest import error_line


@pytest.fixture(scope="module")
def eng(models_dir) -> Engine:
    return Engine(models_dir, provider="cpu", threads=2)


def cancel_after(iteration: int):
    """(cancel event, callback) that cancels the run once ``iteration`` is done."""
    cancel = threading.Event()

    def callback(event):
        if isinstance(event, IterationDone) and event.iteration == iteration:
            cancel.set()
    return cancel, callback


def stopped_then_resumed(eng, config, folder: Path, *stops: int):
    """Run, cancelled after each of ``stops`` (iteration numbers) and resumed; the last part's result."""
    for n, after in enumerate(stops):
        cancel, callback = cancel_after(after)
        part = eng.run(config, CONTENT, STYLE, folder / "cat.png", callback=callback, cancel=cancel, resume=n > 0)
        assert part.status == "cancelled" and part.checkpoint == folder / "cat_checkpoint.npz"
        assert json.loads((folder / "cat.json").read_text())["checkpoint"] == str(part.checkpoint)
    return eng.run(config, CONTENT, STYLE, folder / "cat.png", resume=True)


@pytest.mark.parametrize("changes, stops", [
    (dict(iterations=3, maxfun=3), (2,)),
    # Stopped at the end of the first scale, then inside the second.
    (dict(SHALLOW, size=48, scales=2, scale_iterations=(2, 2), maxfun=3), (2, 3)),
], ids=["one-scale", "two-scales"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(eng, tmp_path, changes, stops):
    # The seed's mode restarts L-BFGS-B every iteration: with the checkpoint's pixels (float64) and the
    # loss scale L-BFGS-B saw, the rest of the run is the same computation.
    config = tiny_config(**changes)
    whole = eng.run(config, CONTENT, STYLE, tmp_path / "whole" / "cat.png")
    resumed = stopped_then_resumed(eng, config, tmp_path, *stops)
    after = stops[-1]
    assert resumed.status == "finished" and resumed.checkpoint is None
    np.testing.assert_array_equal(resumed.image, whole.image)
    assert [it.iteration for it in resumed.iterations] == [it.iteration for it in whole.iterations]
    assert [it.loss for it in resumed.iterations] == pytest.approx([it.loss for it in whole.iterations], rel=1e-6)
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "finished" and record["resumed_after_iteration"] == after
    assert record["evaluations"] == json.loads((tmp_path / "whole" / "cat.json").read_text())["evaluations"]
    assert record["checkpoint"] is None and not (tmp_path / "cat_checkpoint.npz").exists()
    snapshots = [str(tmp_path / it.snapshot.name) for it in whole.iterations if it.snapshot]
    assert record["files"] == snapshots + [str(tmp_path / "cat.png")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        ["cat.png", "cat.json"] + [Path(s).name for s in snapshots])


def test_continuous_mode_resumes_to_the_same_iteration_count(eng, tmp_path):
    config = tiny_config(iterations=4, maxfun=3, optimizer_mode="continuous")
    resumed = stopped_then_resumed(eng, config, tmp_path, 2)
    assert resumed.status == "finished" and [it.iteration for it in resumed.iterations] == [1, 2, 3, 4]


def test_resuming_a_finished_run_is_refused(eng, tmp_path):
    eng.run(tiny_config(), CONTENT, STYLE, tmp_path / "cat.png")
    with pytest.raises(RunError, match="nothing to resume: the run on .*cat.png finished"):
        eng.run(tiny_config(), CONTENT, STYLE, tmp_path / "cat.png", resume=True)
    (tmp_path / "cat.json").unlink()
    with pytest.raises(RunError, match="nothing to resume: no checkpoint .*cat_checkpoint.npz"):
        eng.run(tiny_config(), CONTENT, STYLE, tmp_path / "cat.png", resume=True)


@pytest.fixture(scope="module")
def stopped_once(eng, tmp_path_factory) -> Path:
    """A folder with a run cancelled after its first iteration (a copy of the content beside it)."""
    folder = tmp_path_factory.mktemp("stopped")
    shutil.copyfile(CONTENT, folder / "content.jpg")
    cancel, callback = cancel_after(1)
    eng.run(tiny_config(iterations=3), folder / "content.jpg", STYLE, folder / "out" / "cat.png",
            callback=callback, cancel=cancel)
    return folder


@pytest.fixture
def stopped(stopped_once, tmp_path) -> Path:
    """A copy of ``stopped_once`` for one test to change."""
    shutil.copytree(stopped_once, tmp_path / "copy")
    return tmp_path / "copy"


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("case, fragment", [
    ("config", "the settings changed since that run (content_weight)"),
    ("content", "the content image changed since that run"),
    ("style", "the style image(s) changed since that run"),
    ("missing", "nothing to resume: no checkpoint"),
    ("damaged", "is damaged"),
    ("not-npz", "is damaged"),
])
def test_a_resume_that_does_not_match_is_refused_before_any_work(eng, stopped, monkeypatch, case, fragment):
    out = stopped / "out"
    checkpoint = out / "cat_checkpoint.npz"
    config, content, style = tiny_config(iterations=3), stopped / "content.jpg", STYLE
    if case == "config":
        config = tiny_config(iterations=3, content_weight=7.0)
    elif case == "content":
        Image.open(CONTENT).rotate(180).save(content)
    elif case == "style":
        style = CONTENT
    elif case == "missing":
        checkpoint.unlink()
    elif case == "damaged":
        checkpoint.write_bytes(checkpoint.read_bytes()[:-200])
    else:
        checkpoint.write_text("not a checkpoint")
    before = contents(out)
    monkeypatch.setattr(run_engine.Engine, "prepare", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(RunError) as error:
        eng.run(config, content, style, out / "cat.png", resume=True)
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert contents(out) == before   # nothing written, nothing removed (the lock is gone again)


def test_cli_resume_after_ctrl_c_ends_at_the_same_iteration_count(tmp_path, models_dir, monkeypatch):
    real = run_engine.Problem.loss_and_grad

    def interrupted_in_the_second_iteration(self, x):
        if (tmp_path / "cat_checkpoint.npz").exists():   # written when the first iteration ended
            raise KeyboardInterrupt
        return real(self, x)

    args = ["stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "cat.png"), "--size", "32", "--iterations",
            "3", "--maxfun", "3", "--threads", "2", "--provider", "cpu", "--models-dir", str(models_dir)]
    with monkeypatch.context() as mp:
        mp.setattr(run_engine.Problem, "loss_and_grad", interrupted_in_the_second_iteration)
        stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 130 and "--resume continues" in stopped.stderr
    interrupted = json.loads((tmp_path / "cat.json").read_text())
    assert interrupted["status"] == "interrupted"
    finished = len(interrupted["iterations"])   # 1, or 2 where the first's line search used both budgets
    assert 1 <= finished < 3
    line = error_line(CliRunner().invoke(app, args[:-4] + ["--iterations", "4"] + args[-2:] + ["--resume"]))
    assert "settings changed" in line and "iterations" in line
    resumed = CliRunner().invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "finished" and [it["iteration"] for it in record["iterations"]] == [1, 2, 3]
    assert record["resumed_after_iteration"] == finished


def test_a_run_started_over_and_cut_short_claims_no_checkpoint(tmp_path, models_dir, monkeypatch):
    """Ctrl-C before a new run's first iteration ends: its record and message say there is nothing to
    resume, and the checkpoint of an earlier run with other settings is gone, not offered to --resume."""
    real = run_engine.Problem.loss_and_grad
    args = ["stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "cat.png"), "--iterations", "3",
            "--maxfun", "3", "--threads", "2", "--provider", "cpu", "--models-dir", str(models_dir)]

    def in_the_second_iteration(self, x):
        if (tmp_path / "cat_checkpoint.npz").exists():
            raise KeyboardInterrupt
        return real(self, x)

    def at_once(self, x):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(run_engine.Problem, "loss_and_grad", in_the_second_iteration)
        assert CliRunner().invoke(app, args + ["--size", "32"]).exit_code == 130
        assert (tmp_path / "cat_checkpoint.npz").exists()
        mp.setattr(run_engine.Problem, "loss_and_grad", at_once)
        stopped = CliRunner().invoke(app, args + ["--size", "48"])
    assert stopped.exit_code == 130
    assert "no iteration finished, nothing to resume" in stopped.stderr and "--resume continues" not in stopped.stderr
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "interrupted" and record["checkpoint"] is None and record["config"]["size"] == 48
    assert not (tmp_path / "cat_checkpoint.npz").exists()
