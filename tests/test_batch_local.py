"""`nst batch` in one process: one engine for every job, jobs grouped so sessions are
reused, batch.json, a failing job that does not stop the batch, re-runs that skip what
finished and resume what was cut short. Real VGG16 at 32 px, 2 iterations of 3 evaluations."""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine.run.engine as engine_module
from conftest import error_line, written
from engine import Engine, IterationDone, RunError
from engine.batch.jobs import read_jobs
from engine.batch.runner import BatchStarted, JobEnded, JobStarted, LocalRunner, run_batch
from engine.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
TINY = "size,iterations,maxfun,save_every"
SHALLOW = '"block1_conv1,block2_conv1",block2_conv2,"1000,100"'


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(CONTENT).convert("RGB").resize((48, 32)).save(folder / "cat.png")
    Image.open(STYLE).convert("RGB").resize((40, 32)).save(folder / "starry.png")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "grey.png")
    return folder


def _jobs_file(folder: Path, rows: list[str]) -> Path:
    path = folder / "jobs.csv"
    path.write_text(f"content,style,output,{TINY},style_layers,content_layer,style_weights\n" + "\n".join(rows) + "\n")
    return path


def _run(jobs_path: Path, out: Path, models_dir: Path, callback=None, cancel=None):
    events = []

    def record(event):
        events.append(event)
        if callback:
            callback(event)

    jobs = read_jobs(jobs_path, out)
    summary = run_batch(jobs, out, LocalRunner(Engine(models_dir, provider="cpu", threads=2)), record, cancel)
    return summary, events


def _state(out: Path) -> dict:
    return {job["name"]: job for job in json.loads((out / "batch.json").read_text())["jobs"]}


def test_one_engine_runs_the_jobs_grouped_by_layer_choice_and_a_failing_job_does_not_stop_it(
        inputs, tmp_path, models_dir, monkeypatch):
    broken = inputs / "broken.png"
    data = (inputs / "cat.png").read_bytes()
    broken.write_bytes(data[:len(data) // 2])  # a readable header, a damaged body: fails when run, not validated
    jobs_path = _jobs_file(inputs, [
        "cat.png,starry.png,a.png,32,2,3,1,,,",
        f"cat.png,grey.png,b.png,32,2,3,0,{SHALLOW}",
        "broken.png,starry.png,c.png,32,2,3,0,,,",
        "grey.png,starry.png,d.png,32,2,3,0,,,",
    ])
    opened = []
    real = engine_module.create_session
    monkeypatch.setattr(engine_module, "create_session", lambda source, *a, **k: opened.append(source) or real(
        source, *a, **k))
    out = tmp_path / "out"
    summary, events = _run(jobs_path, out, models_dir)

    assert [e.name for e in events if isinstance(e, JobStarted)] == ["a.png", "c.png", "d.png", "b.png"]
    # Style and loss sessions, once per layer choice (from the content, the content graph never runs).
    assert len(opened) == 4 and len(set(opened)) == 4
    state = _state(out)
    assert summary.failed == 1 and summary.counts["finished"] == 3 and not summary.complete
    assert state["c.png"]["status"] == "failed" and "broken.png" in state["c.png"]["error"]
    for name in ("a.png", "b.png", "d.png"):
        entry = state[name]
        assert entry["status"] == "finished" and entry["evaluations"] >= 6 and entry["error"] is None
        assert entry["output"] == str(out / name) and Image.open(out / name).size[0] == 32
        record = json.loads((out / name).with_suffix(".json").read_text())
        assert record["status"] == "finished" and len(record["iterations"]) == 2
    assert Image.open(out / "a.png").size == (32, 21)  # 48x32 at --size 32
    assert (out / "a_at_iteration_2.png").is_file() and not (out / "b_at_iteration_1.png").exists()
    ends = [e for e in events if isinstance(e, JobEnded)]
    assert [(e.done, e.failed, e.total) for e in ends] == [(1, 0, 4), (1, 1, 4), (2, 1, 4), (3, 1, 4)]
    assert ends[-1].eta == 0 and ends[0].eta > 0
    assert not [name for name in written(out) if name.startswith(".") or name.endswith(".tmp")]


def test_a_rerun_skips_finished_jobs_and_runs_changed_or_missing_ones(inputs, tmp_path, models_dir):
    jobs_path = _jobs_file(inputs, ["cat.png,starry.png,a.png,32,2,3,0,,,", "grey.png,starry.png,b.png,32,2,3,0,,,",
                                    "cat.png,starry.png,c.png,32,2,3,0,,,"])
    out = tmp_path / "out"
    _run(jobs_path, out, models_dir)
    first = _state(out)
    summary, events = _run(jobs_path, out, models_dir)
    assert events[0] == BatchStarted(total=3, skipped=3, to_run=0, resumed=0) and summary.complete
    assert _state(out) == first

    Image.fromarray(np.full((32, 32, 3), 91, np.uint8)).save(inputs / "grey.png")  # other bytes: b runs again
    (out / "a.png").unlink()                                                        # a lost output: a runs again
    _, events = _run(jobs_path, out, models_dir)
    assert sorted(e.name for e in events if isinstance(e, JobStarted)) == ["a.png", "b.png"]
    assert all(entry["status"] == "finished" for entry in _state(out).values())


def test_a_cancelled_or_interrupted_batch_resumes_where_it_stopped(inputs, tmp_path, models_dir):
    # b's content is not the flat grey: from a flat image (max-pooling ties everywhere) L-BFGS-B
    # can stop in its first iteration, and a run with nothing left to do finishes, not cancels.
    jobs_path = _jobs_file(inputs, ["cat.png,starry.png,a.png,32,3,3,0,,,", "starry.png,cat.png,b.png,32,3,3,0,,,",
                                    "cat.png,grey.png,c.png,32,3,3,0,,,"])
    out = tmp_path / "out"
    cancel = threading.Event()

    def cancel_b(event):
        if getattr(event, "name", "") == "b.png" and isinstance(getattr(event, "event", None), IterationDone):
            cancel.set()

    summary, events = _run(jobs_path, out, models_dir, cancel_b, cancel)
    state = _state(out)
    assert [state[n]["status"] for n in ("a.png", "b.png", "c.png")] == ["finished", "cancelled", "pending"]
    assert not (out / "b.png").exists() and not summary.complete

    def interrupt_c(event):
        if getattr(event, "name", "") == "c.png" and isinstance(getattr(event, "event", None), IterationDone):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(jobs_path, out, models_dir, interrupt_c)
    state = _state(out)
    assert [state[n]["status"] for n in ("a.png", "b.png", "c.png")] == ["finished", "finished", "interrupted"]
    assert state["c.png"]["record"] == str(out / "c.json")   # its record says interrupted too
    assert json.loads((out / "c.json").read_text())["status"] == "interrupted"

    summary, events = _run(jobs_path, out, models_dir)
    assert events[0] == BatchStarted(total=3, skipped=2, to_run=1, resumed=1)
    assert [(e.name, e.resume) for e in events if isinstance(e, JobStarted)] == [("c.png", True)]
    assert summary.complete
    for name in ("b.png", "c.png"):
        record = json.loads((out / name).with_suffix(".json").read_text())
        assert [it["iteration"] for it in record["iterations"]] == [1, 2, 3]


def test_a_job_started_over_drops_the_checkpoint_of_other_settings(inputs, tmp_path, models_dir):
    """An interrupted job whose settings then change starts over; cut short before its first
    iteration, the next run must not resume from the old settings' checkpoint (and fail)."""
    out = tmp_path / "out"
    jobs_path = _jobs_file(inputs, ["starry.png,cat.png,b.png,32,3,3,0,,,"])

    def interrupt_after_one(event):
        if isinstance(getattr(event, "event", None), IterationDone):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(jobs_path, out, models_dir, interrupt_after_one)
    assert (out / "b_checkpoint.npz").is_file()
    _jobs_file(inputs, ["starry.png,cat.png,b.png,32,4,3,0,,,"])  # 4 iterations now: another key

    def interrupt_at_start(event):
        if isinstance(event, JobStarted):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(jobs_path, out, models_dir, interrupt_at_start)
    assert _state(out)["b.png"]["status"] == "interrupted" and not (out / "b_checkpoint.npz").exists()
    summary, events = _run(jobs_path, out, models_dir)
    assert summary.complete and [(e.name, e.resume) for e in events if isinstance(e, JobStarted)] == [("b.png", False)]
    assert len(json.loads((out / "b.json").read_text())["iterations"]) == 4


def test_a_process_exit_mid_job_records_it_interrupted(inputs, tmp_path, models_dir):
    """As rich exits when its pipe closes (nst batch ... | head): the job and its record say interrupted
    (they said failed with no error, and batch.json running), and the next run resumes it."""
    out = tmp_path / "out"
    jobs_path = _jobs_file(inputs, ["starry.png,cat.png,b.png,32,3,3,0,,,"])

    def pipe_closed(event):
        if isinstance(getattr(event, "event", None), IterationDone):
            raise SystemExit(1)

    with pytest.raises(SystemExit):
        _run(jobs_path, out, models_dir, pipe_closed)
    assert _state(out)["b.png"]["status"] == "interrupted"
    assert json.loads((out / "b.json").read_text())["status"] == "interrupted"
    summary, events = _run(jobs_path, out, models_dir)
    assert summary.complete and [(e.name, e.resume) for e in events if isinstance(e, JobStarted)] == [("b.png", True)]


def test_one_batch_at_a_time_on_a_folder(inputs, tmp_path, models_dir):
    out = tmp_path / "out"
    out.mkdir()
    jobs_path = _jobs_file(inputs, ["cat.png,starry.png,a.png,32,1,3,0,,,"])
    # Another batch (this live process, on this host) holds the folder.
    (out / "batch.json.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    with pytest.raises(RunError, match=r"batch.json is being written by another run .*batch.json.lock exists"):
        _run(jobs_path, out, models_dir)
    assert written(out) == ["batch.json.lock"]
    # One whose process is gone: taken over, the batch runs, and lets go of the folder after.
    (out / "batch.json.lock").write_text(f"{socket.gethostname()} 999999999\n")
    summary, _ = _run(jobs_path, out, models_dir)
    assert summary.complete and not (out / "batch.json.lock").exists()


def test_cli_batch_output_folder_that_is_a_file_is_one_line(inputs, tmp_path, models_dir):
    # Its jobs' outputs elsewhere (absolute paths): only the batch's own state goes to -o.
    jobs_path = _jobs_file(inputs, [f"cat.png,starry.png,{tmp_path / 'a.png'},32,1,3,0,,,"])
    afile = tmp_path / "afile"
    afile.write_text("mine")
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "-o", str(afile), "--models-dir", str(models_dir)])
    assert error_line(result) == f"error: the output folder {afile} is a file: give a folder (-o)"
    assert result.exit_code == 1 and afile.read_text() == "mine"


def test_cli_batch_exit_status_says_whether_a_job_failed(inputs, tmp_path, models_dir):
    (inputs / "broken.png").write_bytes((inputs / "cat.png").read_bytes()[:200])
    out = tmp_path / "out"
    args = ["batch", "--contents", str(inputs / "[bc]*.png"), "--styles", str(inputs / "starry.png"), "-o", str(out),
            "--size", "32", "--iterations", "1", "--save-every", "0", "--models-dir", str(models_dir),
            "--provider", "cpu", "--threads", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stdout.strip() == str(out / "batch.json")
    assert "broken_starry.png: failed: cannot read image" in result.stderr and "1 finished, 1 failed" in result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_starry.png"]
    (inputs / "broken.png").unlink()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 job, 1 finished before: 0 to run" in result.stderr


def test_cli_batch_refuses_a_bad_row_before_any_work(inputs, tmp_path, models_dir):
    jobs_path = _jobs_file(inputs, ["cat.png,starry.png,a.png,32,2,3,0,,,", "cat.png,nope.png,b.png,32,2,3,0,,,"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "-o", str(out), "--models-dir", str(models_dir)])
    assert error_line(result) == f"error: {jobs_path}:3: style image '{inputs / 'nope.png'}' does not exist"
    assert not out.exists()
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "--contents", "x", "-o", str(out)])
    assert "give a JOBS file or --contents and --styles, one of the two" in error_line(result)
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "--workers", "2", "-o", str(out)])
    assert error_line(result).endswith("go with --ray: add --ray")
    assert not out.exists()


def test_cli_batch_ray_without_ray_says_how_to_install(inputs, tmp_path, models_dir, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    jobs_path = _jobs_file(inputs, ["cat.png,starry.png,a.png,32,2,3,0,,,"])
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "-o", str(tmp_path / "out"), "--ray"])
    assert error_line(result) == "error: --ray needs Ray: pip install -e '.[ray]' (or pip install 'ray[client]==2.60.0')"
    assert not (tmp_path / "out").exists()

