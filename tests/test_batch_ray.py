"""The same batch on a real local Ray cluster (2 CPUs, started here): outputs equal the local
runner's, and a worker killed mid-job is replaced, its job resumed, the batch complete with no
half-written file. Real VGG16 at 32-48 px; skipped without the ray extra."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import written
from engine import ConfigError, Engine
from engine.batch.jobs import read_jobs
from engine.batch.runner import JobEnded, JobStarted, LocalRunner, run_batch
from engine.cli import app

ray = pytest.importorskip("ray")
from engine.batch.ray_runner import RayRunner  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def jobs_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    Image.open(CONTENT).convert("RGB").resize((48, 32)).save(folder / "cat.png")
    Image.open(STYLE).convert("RGB").resize((40, 32)).save(folder / "starry.png")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "grey.png")
    path = folder / "jobs.jsonl"
    rows = [dict(content="cat.png", style="starry.png", output="a.png", size=32, iterations=2, maxfun=3),
            dict(content="grey.png", style="starry.png", output="sub/b.png", size=32, iterations=2, maxfun=3,
                 save_every=0),
            # The seed's loop: a resumed run of it ends on the very pixels of one never stopped.
            dict(content="cat.png", style="grey.png", output="c.png", size=48, iterations=4, maxfun=4,
                 optimizer_mode="seed")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def engine_options(models_dir) -> dict:
    return dict(models_dir=models_dir, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def local_out(jobs_path, engine_options, tmp_path_factory) -> Path:
    """The batch run by the local runner: what the Ray runs must equal."""
    out = tmp_path_factory.mktemp("local")
    assert _run(jobs_path, out, LocalRunner(Engine(**engine_options)))[0].complete
    return out


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _run(jobs_path: Path, out: Path, runner, callback=None, only: str | None = None):
    events = []

    def record(event):
        events.append(event)
        if callback:
            callback(event)

    jobs = [job for job in read_jobs(jobs_path, out) if only is None or job.name == only]
    return run_batch(jobs, out, runner, record), events


def test_ray_outputs_equal_the_local_runners(cluster, jobs_path, local_out, engine_options, tmp_path):
    remote, events = _run(jobs_path, tmp_path / "ray", RayRunner(scratch=str(tmp_path / "scratch"),
                                                                  engine_options=engine_options))
    assert remote.complete
    assert len({e.worker for e in events if isinstance(e, JobStarted)}) == 2  # both workers of 1 CPU each
    files = written(local_out)
    assert written(tmp_path / "ray") == files
    for name in files:
        if name.endswith(".png"):
            np.testing.assert_array_equal(_pixels(tmp_path / "ray" / name), _pixels(local_out / name))
    for name in ("a.json", "sub/b.json", "c.json"):
        here, there = (json.loads((side / name).read_text()) for side in (local_out, tmp_path / "ray"))
        assert there["status"] == "finished" and there["content"] == here["content"] and there["style"] == here["style"]
        assert there["output"] == str(tmp_path / "ray" / name.replace(".json", ".png"))
        assert [it["loss"] for it in there["iterations"]] == [it["loss"] for it in here["iterations"]]
        assert there["files"] and all(Path(f).parent == (tmp_path / "ray" / name).parent and Path(f).is_file()
                                      for f in there["files"])
    assert not any((tmp_path / "scratch").rglob("*.png"))  # finished jobs leave nothing in the scratch folder


def test_a_worker_killed_mid_job_is_replaced_and_the_batch_completes(cluster, jobs_path, local_out, engine_options,
                                                                     tmp_path):
    scratch = tmp_path / "scratch"
    runner = RayRunner(workers=1, scratch=str(scratch), engine_options=engine_options)
    killed = []

    def kill_mid_job(pid: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(scratch.rglob("c_checkpoint.npz")):
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)  # after its first finished iteration, before its last
        killed.append(pid)

    def on_event(event):
        if isinstance(event, JobStarted) and event.name == "c.png" and not killed:
            threading.Thread(target=kill_mid_job, args=(int(event.worker.split()[-1]),), daemon=True).start()

    out = tmp_path / "ray"
    summary, events = _run(jobs_path, out, runner, on_event, only="c.png")
    assert killed and summary.complete
    starts = [(e.name, e.worker) for e in events if isinstance(e, JobStarted) and e.name == "c.png"]
    assert len(starts) == 2 and starts[0][1] != starts[1][1]  # retried on a new worker
    state = {job["name"]: job for job in json.loads((out / "batch.json").read_text())["jobs"]}
    assert state["c.png"]["status"] == "finished" and state["c.png"]["attempts"] == 2
    record = json.loads((out / "c.json").read_text())
    assert record["status"] == "finished" and [it["iteration"] for it in record["iterations"]] == [1, 2, 3, 4]
    assert record["resumed_after_iteration"] >= 1  # from the dead worker's checkpoint in the node's scratch folder
    assert not [name for name in written(out) if name.startswith(".") or ".tmp" in name or name.endswith(".lock")]
    assert [e.status for e in events if isinstance(e, JobEnded)] == ["finished"]
    # The retry resumed from the dead worker's checkpoint and ended where a run never killed ends.
    np.testing.assert_array_equal(_pixels(out / "c.png"), _pixels(local_out / "c.png"))


def test_cli_batch_ray_runs_on_the_cluster(cluster, jobs_path, local_out, models_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "-o", str(out), "--ray", "--workers", "1",
                                      "--models-dir", str(models_dir), "--provider", "cpu", "--threads", "1",
                                      "--scratch", str(tmp_path / "scratch")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "batch.json")
    assert "[1/3] starting a.png on ray pid" in result.stderr and "3 finished" in result.stderr
    np.testing.assert_array_equal(_pixels(out / "sub" / "b.png"), _pixels(local_out / "sub" / "b.png"))


def test_a_job_no_node_can_hold_is_refused(cluster, jobs_path, engine_options, tmp_path):
    runner = RayRunner(gpus_per_job=1, workers=1, engine_options=engine_options)
    with pytest.raises(ConfigError, match="too few for one job of 1 CPUs and 1 GPUs"):
        _run(jobs_path, tmp_path / "out", runner, only="a.png")
    assert not list((tmp_path / "out").glob("*.png"))
    # From the command line: one line, before the output folder or its batch.json is written.
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["batch", str(jobs_path), "-o", str(out), "--ray", "--gpus-per-job", "1",
                                      "--models-dir", str(engine_options["models_dir"]), "--provider", "cpu"])
    assert result.exit_code != 0 and "too few for one job" in result.stderr
    assert not out.exists()


def _refuse_init(**kwargs):
    raise AssertionError("ray.init must not be called for an address that cannot be reached")


def test_a_worker_reads_only_the_shipped_inputs_masks_and_init_included(tmp_path, engine_options):
    """As on another node: the job's own paths (the driver's) are gone by the time the worker runs it.
    Two jobs alike but for their output get scratch folders of their own; a dead worker's lock there
    (another node's, in a shared scratch folder) is taken over."""
    from engine.batch.ray_runner import _Worker, _input_files, _slot
    from engine.batch.runner import Work

    driver = tmp_path / "driver"
    driver.mkdir()
    Image.open(CONTENT).convert("RGB").resize((48, 32)).save(driver / "cat.png")
    Image.open(STYLE).convert("RGB").resize((40, 32)).save(driver / "starry.png")
    Image.open(STYLE).convert("RGB").resize((48, 32)).save(driver / "start.png")
    left = np.zeros((32, 48), np.uint8)
    left[:, :24] = 255
    Image.fromarray(left).save(driver / "left.png")
    Image.fromarray(255 - left).save(driver / "right.png")
    rows = [dict(content="cat.png", style="starry.png,starry.png", output=name, size=32, iterations=1, maxfun=2,
                 init="start.png", content_masks="left.png,right.png") for name in ("a.png", "b.png")]
    (driver / "jobs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    jobs = read_jobs(driver / "jobs.jsonl", tmp_path / "out")
    items = [Work(job, False) for job in jobs]
    shipped = [[path.read_bytes() for path in _input_files(item)] for item in items]
    assert len(shipped[0]) == 6   # content, 2 styles, init, 2 masks
    slots = [_slot(item.job) for item in items]
    assert slots[0] != slots[1]
    moved = tmp_path / "driver-elsewhere"
    driver.rename(moved)   # the worker's node has none of these paths
    worker = _Worker(engine_options)
    scratch = tmp_path / "scratch"
    # A lock a dead worker of another node left in the shared scratch folder: taken over.
    lock = scratch / "nst-batch" / slots[0] / "out" / "a.png.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("another-node 4242\n")
    outcome, files, paths = worker.run(items[0], str(scratch), slots[0], *shipped[0])
    assert outcome.status == "finished", outcome.error
    assert {"a.png", "a.json"} <= set(files) and not any(name.startswith("b") for name in files)
    record = json.loads(files["a.json"])
    assert record["config"]["content_masks"] == [str(scratch / "nst-batch" / slots[0] / "in" / f"{k}.png")
                                                 for k in (4, 5)]
    assert paths["inputs"][record["config"]["init"]] == str(driver / "start.png")   # repathed to the driver's


def test_an_address_nothing_listens_on_is_one_line_at_once(monkeypatch):
    """Ray itself waits minutes for an unreachable address (printing C++ warnings): the engine
    tries the port first and says so in one line, without starting Ray."""
    from engine.batch.ray_runner import REACH_SECONDS, join_cluster

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _refuse_init)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        tick = time.perf_counter()
        with pytest.raises(ConfigError) as caught:
            join_cluster(address)
        assert time.perf_counter() - tick < REACH_SECONDS
        message = str(caught.value)
        assert message.startswith(f"cannot reach the Ray cluster at '{address}' (connection refused)")
        assert "\n" not in message
    with pytest.raises(ConfigError, match="'head' is not a Ray cluster address: give auto, host:6379"):
        join_cluster("head")


def test_a_cluster_that_refuses_to_join_is_one_config_error(monkeypatch):
    """A port that answers but a Ray that will not join (a wrong service, token authentication):
    Ray's reason, on one line, with what to check."""
    from engine.batch.ray_runner import join_cluster

    def refused(**kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}\n(details)")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            join_cluster(address)
    message = str(caught.value)
    assert message.startswith(f"cannot join the Ray cluster at '{address}': Failed to connect to Ray cluster")
    assert "RAY_AUTH_MODE=token" in message and "\n" not in message
    # auto with no cluster on this machine: what to start, not Ray's advice about its own --address flag.
    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(
        ConnectionError("Could not find any running Ray instance.")))
    with pytest.raises(ConfigError, match="no running Ray cluster found on this machine for --ray-address auto: "
                                          "start one"):
        join_cluster("auto")