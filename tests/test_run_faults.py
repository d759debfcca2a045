"""A run's files under faults: inputs never written, one run per output, full disks, non-finite losses."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine.io.files
import engine.run.engine as run_engine
from engine import Engine, IterationDone, NonFiniteError, Prepared, RunError
from engine.cli import app
from engine.run.outputs import OutputLock
from engine.runtime.sessions import LossGradEvaluator
from features_support import CONTENT, STYLE, tiny_config

from conftest import error_line


@pytest.fixture(scope="module")
def eng(models_dir) -> Engine:
    return Engine(models_dir, provider="cpu", threads=2)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


def cli(models_dir: Path, output: Path, *extra: str, content: Path = CONTENT, style: Path = STYLE):
    return CliRunner().invoke(app, ["stylize", str(content), str(style), "-o", str(output), "--size", "32",
                                    "--iterations", "2", "--maxfun", "3", "--threads", "2", "--provider", "cpu",
                                    "--models-dir", str(models_dir), *extra])


# ---------------------------------------------------------------- inputs are never outputs


@pytest.mark.parametrize("case, fragment", [
    ("output-is-content", "the output {out} would overwrite the content image"),
    ("output-is-style", "the output {out} would overwrite the style image"),
    ("snapshot-is-init", "the snapshot 2 {folder}/cat_at_iteration_2.png would overwrite the init image"),
    ("output-is-content-by-another-path", "would overwrite the content image"),
])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, models_dir, monkeypatch, case, fragment):
    monkeypatch.setattr(run_engine.Engine, "prepare", lambda *a, **k: pytest.fail("computed"))
    content, style = tmp_path / "content.jpg", tmp_path / "style.jpg"
    shutil.copyfile(CONTENT, content)
    shutil.copyfile(STYLE, style)
    extra: list[str] = []
    out = {"output-is-content": content, "output-is-style": style, "snapshot-is-init": tmp_path / "cat.png",
           "output-is-content-by-another-path": tmp_path / "sub" / ".." / "content.jpg"}[case]
    if case == "snapshot-is-init":
        Image.open(CONTENT).save(tmp_path / "cat_at_iteration_2.png")
        extra = ["--init", str(tmp_path / "cat_at_iteration_2.png")]
    (tmp_path / "sub").mkdir()
    before = contents(tmp_path)
    line = error_line(cli(models_dir, out, *extra, content=content, style=style))
    assert fragment.format(out=out, folder=tmp_path) in line, line
    assert contents(tmp_path) == before


# ---------------------------------------------------------------- one run per output


def test_a_second_run_on_an_output_in_use_is_refused_and_the_first_goes_on(eng, tmp_path):
    output, refused = tmp_path / "cat.png", []

    def callback(event):
        if isinstance(event, Prepared):   # the first run holds its output now
            with pytest.raises(RunError) as error:
                eng.run(tiny_config(seed=9), CONTENT, STYLE, output)
            refused.append(str(error.value))

    result = eng.run(tiny_config(), CONTENT, STYLE, output, callback=callback)
    assert refused and "is being written by another run" in refused[0] and "cat.png.lock" in refused[0]
    assert result.status == "finished"
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["config"]["seed"] == tiny_config().seed   # the record is the first run's, whole
    assert record["files"] == [str(tmp_path / "cat_at_iteration_1.png"), str(output)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.json", "cat.png", "cat_at_iteration_1.png"]


def test_a_lock_left_by_a_dead_process_is_taken_over(eng, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "cat.png.lock"
    with OutputLock(tmp_path / "cat.png"):
        host = lock.read_text().split()[0]
    lock.write_text(f"{host} {dead.pid}\n")
    assert eng.run(tiny_config(), CONTENT, STYLE, tmp_path / "cat.png").status == "finished"
    assert not lock.exists()


# ---------------------------------------------------------------- full disk at every write


def full_disk_at(monkeypatch, name: str, nth: int = 1) -> None:
    """The nth atomic write of a file called ``name`` fails as a full disk does (before its rename)."""
    real, seen = engine.io.files.os.replace, {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            seen["n"] += 1
            if seen["n"] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(engine.io.files.os, "replace", replace)


@pytest.mark.parametrize("name, nth, status, left", [
    ("cat_at_iteration_2.png", 1, "failed", ["cat.json", "cat_at_iteration_1.png", "cat_checkpoint.npz"]),
    ("cat_checkpoint.npz", 2, "failed", ["cat.json", "cat_at_iteration_1.png", "cat_at_iteration_2.png",
                                         "cat_checkpoint.npz"]),
    ("cat.png", 1, "failed", ["cat.json", "cat_at_iteration_1.png", "cat_at_iteration_2.png",
                              "cat_checkpoint.npz"]),
    ("cat.json", 1, None, ["cat.json"]),   # the record a run writes as it starts: it fails, recorded so
    ("cat.json", 2, None, ["cat.png", "cat_at_iteration_1.png", "cat_at_iteration_2.png"]),
], ids=["snapshot", "checkpoint", "image", "record-at-start", "record-at-end"])
def test_a_full_disk_at_any_write_is_one_line_and_leaves_earlier_files_valid(
        tmp_path, models_dir, monkeypatch, name, nth, status, left):
    full_disk_at(monkeypatch, name, nth)
    line = error_line(cli(models_dir, tmp_path / "cat.png", "--save-every", "1"))
    assert name in line and "No space left on device" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == left   # no temp file, no lock
    for image in [n for n in left if n.endswith(".png")]:
        with Image.open(tmp_path / image) as done:
            done.load()
    if status:
        record = json.loads((tmp_path / "cat.json").read_text())
        assert record["status"] == status and name in record["error"] and record["output"] is None
        assert record["files"] == [str(tmp_path / n) for n in left if n.startswith("cat_at")]
        assert "cat.json" not in line   # the message names only what went wrong
    if name == "cat_checkpoint.npz":   # the first checkpoint stayed valid: the run resumes from it
        monkeypatch.undo()
        assert cli(models_dir, tmp_path / "cat.png", "--save-every", "1", "--resume").exit_code == 0
        assert json.loads((tmp_path / "cat.json").read_text())["resumed_after_iteration"] == 1


# ---------------------------------------------------------------- numbers


def test_a_non_finite_loss_stops_the_run_keeps_the_last_finite_image_and_records_failed(
        eng, tmp_path, monkeypatch):
    real, calls, seen = LossGradEvaluator.__call__, {"n": 0}, []

    def poisoned(self, image):
        terms, grad = real(self, image)
        calls["n"] += 1
        seen.append(np.array(image, np.float64).reshape(self.shape))
        if calls["n"] == 6:
            grad = grad.copy()
            grad[0, 1, 3, 4] = np.nan
        return terms, grad

    monkeypatch.setattr(LossGradEvaluator, "__call__", poisoned)
    events = []
    with pytest.raises(NonFiniteError) as error:
        eng.run(tiny_config(iterations=3, maxfun=3), CONTENT, STYLE, tmp_path / "cat.png", callback=events.append)
    message = str(error.value)
    assert message.startswith("evaluation 6 of the run gave a non-finite gradient") and "\n" not in message
    assert message.endswith(f"the last finite image is {tmp_path / 'cat.png'}")
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "failed" and record["error"] == message and record["evaluations"] == 5
    assert record["output"] == str(tmp_path / "cat.png")
    expected = eng.prepare(tiny_config(), CONTENT, STYLE).to_image(seen[4])   # evaluation 5's point
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cat.png").convert("RGB")), expected)
    assert [e.iteration for e in events if isinstance(e, IterationDone)] == [1]


@pytest.mark.parametrize("shape", ["hwc", "nhwc", "short", "chw"])
def test_loss_and_grad_refuses_another_layout_naming_the_expected_one(eng, shape):
    problem = eng.prepare(tiny_config(), CONTENT, STYLE)
    _, _, h, w = problem.shape
    x = problem.initial_image()
    bad = {"hwc": x[0].transpose(1, 2, 0), "nhwc": x.transpose(0, 2, 3, 1), "short": x.ravel()[:-3],
           "chw": x[0]}[shape]
    with pytest.raises(RunError) as error:
        problem.loss_and_grad(bad)
    assert f"(1, 3, {h}, {w})" in str(error.value) and "BGR channels first" in str(error.value)
    assert f"got shape {bad.shape}" in str(error.value) and problem.evaluations == 0
    loss, grad = problem.loss_and_grad(x.ravel())   # flat of the right size is fine
    assert np.isfinite(loss) and grad.shape == (x.size,)


def test_a_record_lists_exactly_the_files_its_run_wrote(eng, tmp_path):
    (tmp_path / "cat_at_iteration_3.png").write_bytes(b"an older run's snapshot, not this one's")
    eng.run(tiny_config(iterations=2, save_every=1, sheet=True, gif=True), CONTENT, STYLE, tmp_path / "cat.png")
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["files"] == [str(tmp_path / n) for n in ("cat_at_iteration_1.png", "cat_at_iteration_2.png",
                                                           "cat.png", "cat_sheet.png", "cat.gif")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(f).name for f in record["files"]] + ["cat.json", "cat_at_iteration_3.png"])
