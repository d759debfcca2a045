"""`nst serve --ray`: jobs run on Ray actors of a real local cluster, their progress streamed per
iteration, their files written into the server's job folders; cancel, resume and a killed worker.
Real VGG16 at 64 px; skipped without the ray extra."""
from __future__ import annotations

import io
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from serve_support import LONG, TINY, LiveServer, serve_settings

from engine.config import TransferConfig
from engine.run.engine import Engine

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    live = LiveServer(serve_settings(tmp_path_factory.mktemp("serve-ray"), models_dir, threads=1,
                                     ray_address="local"))
    yield live
    live.stop()
    ray.shutdown()


def _events(server, job_id, on_event=None) -> list[dict]:
    """The job's event stream to its end; ``on_event(kind, data)`` sees each as it arrives."""
    events, fields = [], {}
    with server.http.stream("GET", f"api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                events.append({"event": fields["event"], "data": json.loads(fields["data"])})
                if on_event:
                    on_event(fields["event"], events[-1]["data"])
                fields = {}
    return events


def _pid(events: list[dict]) -> int:
    worker = next(e["data"]["worker"] for e in events if e["event"] == "started")
    assert worker.startswith("ray pid ")
    return int(worker.removeprefix("ray pid "))


def test_a_job_runs_on_a_ray_actor_and_streams_each_iteration(server, models_dir):
    assert server.http.get("healthz").json()["workers"] == 2  # the cluster's 2 CPUs at 1 thread per job
    job_id = server.submit(TINY).json()["id"]
    fetched = {}

    def on_event(kind, data):
        if kind == "iteration":  # the snapshot is in the server's folder before its event
            fetched[data["iteration"]] = server.http.get(data["snapshot"]).status_code

    events = _events(server, job_id, on_event)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "finished" and {"prepared", "evaluated"} <= set(kinds)
    assert _pid(events) != os.getpid()
    assert fetched == {1: 200, 2: 200}

    folder = server.board.get(job_id).folder
    record = json.loads((folder / "output" / "result.json").read_text())
    assert record["status"] == "finished" and record["output"] == str(folder / "output" / "result.png")
    assert record["files"] and all(os.path.isfile(f) and f.startswith(str(folder)) for f in record["files"])
    assert sorted(p.name for p in (folder / "output").iterdir()) == [
        "result.json", "result.png", "result_at_iteration_1.png", "result_at_iteration_2.png"]  # no checkpoint

    # The same job on an engine in this process, with the same settings, makes the same picture.
    inputs = folder / "inputs"
    here = Engine(models_dir, "cpu", threads=1).run(
        TransferConfig(**server.board.get(job_id).config), inputs / "content.png", [inputs / "style-1.png"]).image
    there = Image.open(io.BytesIO(server.http.get(f"api/jobs/{job_id}/result").content))
    np.testing.assert_array_equal(np.asarray(there), np.asarray(here))


def test_cancel_stops_a_ray_job_which_resume_continues(server):
    job_id = server.submit(LONG).json()["id"]
    server.wait_for(job_id, lambda job: job["snapshots"])
    server.http.post(f"api/jobs/{job_id}/cancel")
    job = server.wait(job_id, ("cancelled",), timeout=20)
    done = job["iteration"]
    folder = server.board.get(job_id).folder / "output"
    assert (folder / "result_checkpoint.npz").is_file()
    assert json.loads((folder / "result.json").read_text())["status"] == "cancelled"

    server.http.post(f"api/jobs/{job_id}/resume")
    server.wait_for(job_id, lambda job: job["status"] == "running" and job["iteration"] > done)
    server.http.post(f"api/jobs/{job_id}/cancel")
    server.wait(job_id, ("cancelled",), timeout=20)
    started = [e["data"] for e in server.board.events_after(job_id, 0)[0] if e["event"] == "started"]
    assert [s["resumed_from"] for s in started] == [None, done]
    iterations = [e["data"]["iteration"] for e in server.board.events_after(job_id, 0)[0] if e["event"] == "iteration"]
    assert iterations == list(range(1, len(iterations) + 1))  # it went on from where it stopped


def test_a_killed_ray_worker_is_replaced_and_the_job_continues(server):
    job_id = server.submit({**TINY, "iterations": 12, "maxfun": 4}).json()["id"]
    killed = []

    def on_event(kind, data):
        if kind == "iteration" and data["iteration"] == 2 and not killed:
            os.kill(_pid(server.board.events_after(job_id, 0)[0]), signal.SIGKILL)
            killed.append(data["iteration"])

    events = _events(server, job_id, on_event)
    assert killed and events[-1]["event"] == "finished", events[-1]
    iterations = [e["data"]["iteration"] for e in events if e["event"] == "iteration"]
    assert iterations[-1] == 12 and iterations[:2] == [1, 2]
    assert len([e for e in events if e["event"] == "prepared"]) == 2  # a new worker took over
    record = json.loads((server.board.get(job_id).folder / "output" / "result.json").read_text())
    assert record["status"] == "finished" and len(record["iterations"]) == 12
