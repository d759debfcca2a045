"""The job API of `nst serve`, against a real server on a loopback port running real tiny jobs."""
from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from serve_support import CONTENT, LONG, STYLE, TINY, LiveServer, serve_settings, shared_runner

from engine.config import AUTO_COARSE_ITERATIONS, AUTO_SCALES_FROM
from engine.serve.jobs import JobBoard
from engine.serve.params import job_config


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    live = LiveServer(serve_settings(tmp_path_factory.mktemp("serve-data"), models_dir))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def finished(server):
    """A tiny job run to the end, and every event its stream sent."""
    reply = server.submit(TINY)
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    with server.http.stream("GET", f"api/jobs/{job_id}/events") as stream:
        events = _parse_sse(stream.iter_lines())
    return job_id, events


def _parse_sse(lines) -> list[dict]:
    events, fields = [], {}
    for line in lines:
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
            fields = {}
    return events


def test_a_job_is_accepted_at_once_then_runs_to_its_result(server, finished):
    job_id, events = finished
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished"
    assert {"started", "prepared", "evaluated"} <= set(kinds)
    iterations = [e["data"] for e in events if e["event"] == "iteration"]
    assert [it["iteration"] for it in iterations] == [1, 2]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    job = server.http.get(f"api/jobs/{job_id}").json()
    assert job["status"] == "finished" and job["iteration"] == 2 and job["snapshots"] == [1, 2]
    assert job["loss"] == pytest.approx(iterations[-1]["loss"])

    result = server.http.get(job["result"])
    assert result.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(result.content))
    assert max(image.size) == 64
    assert json.loads(image.text["nst:params"]) == TINY  # the settings travel with the picture
    assert json.loads(image.text["nst:config"])["iterations"] == 2
    snapshot = server.http.get(iterations[0]["snapshot"])
    assert snapshot.status_code == 200 and Image.open(io.BytesIO(snapshot.content)).size == image.size
    download = server.http.get(f"api/jobs/{job_id}/snapshots/2", params={"download": 1})
    assert download.headers["content-disposition"] == f'attachment; filename="nst-{job_id}-iteration-2.png"'

    record = server.http.get(f"api/jobs/{job_id}/record").json()
    assert record["status"] == "finished" and len(record["iterations"]) == 2


def test_submitting_answers_before_the_job_has_run(server):
    started = time.perf_counter()
    reply = server.submit(LONG)
    seconds = time.perf_counter() - started
    job_id = reply.json()["id"]
    try:
        assert reply.status_code == 202 and seconds < 5.0  # the job itself takes minutes
        assert server.http.get(f"api/jobs/{job_id}").json()["status"] in ("queued", "running")
    finally:
        server.http.post(f"api/jobs/{job_id}/cancel")
        server.wait(job_id, ("cancelled",))


def test_a_job_counts_the_half_size_start_in_its_iterations(server):
    job_id = server.submit({"size": AUTO_SCALES_FROM, "iterations": 2, "maxfun": 1, "init": "content"}).json()["id"]
    try:
        assert server.http.get(f"api/jobs/{job_id}").json()["iterations"] == AUTO_COARSE_ITERATIONS + 2
    finally:
        server.http.post(f"api/jobs/{job_id}/cancel")
        server.wait(job_id, ("cancelled", "finished"))


def test_event_stream_resumes_after_last_event_id(server, finished):
    job_id, events = finished
    with server.http.stream("GET", f"api/jobs/{job_id}/events", headers={"Last-Event-ID": "3"}) as stream:
        resumed = _parse_sse(stream.iter_lines())
    assert resumed == events[3:]


def test_jobs_list_holds_queue_and_history_newest_first(server, finished):
    jobs = server.http.get("api/jobs").json()["jobs"]
    assert finished[0] in [j["id"] for j in jobs]
    created = [j["created"] for j in jobs]
    assert created == sorted(created, reverse=True)


def test_cancel_takes_a_queued_job_off_the_queue_and_stops_a_running_one(server):
    running = server.submit(LONG).json()["id"]
    queued = server.submit(TINY).json()
    server.wait(running, ("running",))
    assert server.http.get(f"api/jobs/{queued['id']}").json()["position"] == 0

    assert server.http.post(f"api/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert server.http.get(f"api/jobs/{queued['id']}").json()["started"] is None  # it never ran

    server.wait_for(running, lambda job: job["snapshots"])
    server.http.post(f"api/jobs/{running}/cancel")
    job = server.wait(running, ("cancelled",), timeout=10)
    assert job["snapshots"] and job["iteration"] < LONG["iterations"]
    assert server.http.get(f"api/jobs/{running}/snapshots/{job['snapshots'][0]}").status_code == 200
    assert server.http.get(f"api/jobs/{running}/record").json()["status"] == "cancelled"
    assert server.http.get(f"api/jobs/{running}/result").status_code == 404
    again = server.http.post(f"api/jobs/{running}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["detail"]


def test_a_full_queue_refuses_a_submit_with_the_limit(tmp_path, models_dir):
    live = LiveServer(serve_settings(tmp_path, models_dir, max_queued=1))
    try:
        running = live.submit(LONG).json()["id"]
        live.wait(running, ("running",))
        waiting = live.submit(TINY)
        assert waiting.status_code == 202
        refused = live.submit(TINY)
        assert refused.status_code == 429 and "--max-queued" in refused.json()["detail"]
        assert [j["id"] for j in live.http.get("api/jobs").json()["jobs"]] == [waiting.json()["id"], running]
        for job in (waiting.json()["id"], running):
            live.http.post(f"api/jobs/{job}/cancel")
            live.wait(job, ("cancelled",))
    finally:
        live.stop()


def test_delete_removes_an_ended_job_and_refuses_an_active_one(server):
    job_id = server.submit(LONG).json()["id"]
    busy = server.http.delete(f"api/jobs/{job_id}")
    assert busy.status_code == 409 and "cancel it before deleting it" in busy.json()["detail"]
    server.http.post(f"api/jobs/{job_id}/cancel")
    server.wait(job_id, ("cancelled",))
    folder = server.board.root / job_id
    assert folder.is_dir()
    assert server.http.delete(f"api/jobs/{job_id}").status_code == 200
    assert not folder.exists()
    assert server.http.get(f"api/jobs/{job_id}").status_code == 404


def test_a_restarted_server_lists_its_history_and_resumes_an_interrupted_job(server, finished, tmp_path):
    board = server.board
    # A job that was running when its server died: its folder says running.
    folder = board.root / finished[0]
    state = json.loads((folder / "job.json").read_text())
    crashed = "20200101t000000-0123abcd"
    target = board.root / crashed
    target.mkdir()
    for part in ("inputs", "params.json"):
        src = folder / part
        (target / part).mkdir() if src.is_dir() else (target / part).write_bytes(src.read_bytes())
    for image in (folder / "inputs").iterdir():
        (target / "inputs" / image.name).write_bytes(image.read_bytes())
    (target / "job.json").write_text(json.dumps({**state, "id": crashed, "status": "running"}))
    # ... and its events log ends in a line the crash cut short.
    lines = (folder / "events.jsonl").read_text().splitlines()[:3]
    (target / "events.jsonl").write_text("\n".join(lines) + '\n{"id": 4, "event": "evalu')

    restarted = JobBoard(board.root.parent, lambda: shared_runner(server.settings.models_dir))
    assert {finished[0], crashed} <= {j["id"] for j in restarted.list()}
    assert restarted.summary(finished[0])["status"] == "finished"
    job = restarted.summary(crashed)
    assert job["status"] == "interrupted" and job["resumable"] and "resume" in job["error"]
    assert json.loads((target / "job.json").read_text())["status"] == "interrupted"

    restarted.start()
    try:
        assert restarted.resume(crashed)["status"] == "queued"
        deadline = time.monotonic() + 60
        while restarted.summary(crashed)["status"] != "finished":
            assert time.monotonic() < deadline, restarted.summary(crashed)
            time.sleep(0.05)
        assert (target / "output" / "result.png").is_file()
        # The cut line was dropped at the restart, so every event written since can be read: the
        # interruption found at the restart (4), then the resumed run's, numbered on.
        events = restarted.events_after(crashed, 0)[0]
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert [e["event"] for e in events[3:5]] == ["interrupted", "queued"] and events[-1]["event"] == "finished"
        assert [json.loads(line)["id"] for line in (target / "events.jsonl").read_text().splitlines()] == \
            [e["id"] for e in events]
    finally:
        restarted.stop()
        restarted.delete(crashed)


def test_stopping_the_server_marks_its_running_job_interrupted(tmp_path, models_dir):
    live = LiveServer(serve_settings(tmp_path, models_dir))
    job_id = live.submit(LONG).json()["id"]
    live.wait(job_id, ("running",))
    live.stop()
    state = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    assert state["status"] == "interrupted" and "resume it" in state["error"]
    record = json.loads((tmp_path / "jobs" / job_id / "output" / "result.json").read_text())
    assert record["status"] == "interrupted"  # the engine's record says the same


@pytest.mark.parametrize("params, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"colour": 3}', "unknown parameter colour"),
    ('{"init": "/etc/passwd"}', "not allowed on a server"),
    ('{"iterations": 0}', "iterations must be at least 1"),
    ('{"preset": "nope"}', "unknown preset"),
    ('{"style_blend": [1, 2]}', "2 style_blend weights for 1 style images"),
    ('{"size": 100000}', "--max-pixels"),
    ('{"size": 64, "scales": 2, "scale_iterations": [1, 2, 3]}', "3 scale iteration counts for 2 scales"),
])
def test_invalid_params_are_refused_before_queueing(server, params, words):
    before = len(server.http.get("api/jobs").json()["jobs"])
    files = [("content", ("c.jpg", CONTENT.read_bytes())), ("style", ("s.jpg", STYLE.read_bytes()))]
    reply = server.http.post("api/jobs", files=files, data={"params": params})
    assert reply.status_code == 400 and words in reply.json()["detail"]
    assert len(server.http.get("api/jobs").json()["jobs"]) == before


def test_a_missing_style_is_one_clear_400(server):
    reply = server.http.post("api/jobs", files=[("content", ("c.jpg", CONTENT.read_bytes()))])
    assert reply.status_code == 400 and "style" in reply.json()["detail"]


def test_healthz_and_openapi(server):
    health = server.http.get("healthz").json()
    assert health["status"] == "ok" and health["workers"] == 1
    schema = server.http.get("openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/resume",
            "/healthz"} <= set(schema["paths"])


class CancelAfterFirstIteration:
    """A real engine whose first run is cancelled as its first iteration ends (no race with the clock)."""

    def __init__(self, runner):
        self.runner = runner
        self.name = runner.name
        self.runs = 0

    def run(self, config, content, styles, output, callback, cancel, resume):
        self.runs += 1

        def wrapped(event):
            callback(event)
            if self.runs == 1 and getattr(event, "iteration", 0) == 1:
                cancel.set()

        return self.runner.run(config, content, styles, output, wrapped, cancel, resume)


@pytest.mark.parametrize("save_every", [1, 0])
def test_a_resumed_job_continues_from_its_last_finished_iteration(tmp_path, models_dir, save_every):
    board = JobBoard(tmp_path, lambda: CancelAfterFirstIteration(shared_runner(models_dir)))
    board.start()
    try:
        # One fmin_l_bfgs_b call per iteration; without snapshots the checkpoint says where it stopped.
        params = {**TINY, "iterations": 3, "optimizer_mode": "seed", "save_every": save_every}
        images = [Image.open(CONTENT).convert("RGB"), Image.open(STYLE).convert("RGB")]
        job, _ = board.submit(params, job_config(params, [images[1].size], images[0].size, 10**6), images[0], images[1:])
        _wait(board, job.id, "cancelled")
        assert board.summary(job.id)["snapshots"] == ([1] if save_every else [])
        board.resume(job.id)
        _wait(board, job.id, "finished")
        events = board.events_after(job.id, 0)[0]
        started = [e["data"] for e in events if e["event"] == "started"]
        assert [s["resumed_from"] for s in started] == [None, 1]
        iterations = [e["data"]["iteration"] for e in events if e["event"] == "iteration"]
        assert iterations == [1, 2, 3]  # iteration 1 was not run twice
        # A job that ended keeps its events on disk only: a server's memory does not grow with its history.
        assert board.get(job.id).events is None and events[-1]["event"] == "finished"
        assert board.summary(job.id)["snapshots"] == ([1, 2, 3] if save_every else [])
        record = json.loads((job.folder / "output" / "result.json").read_text())
        assert record["status"] == "finished" and len(record["iterations"]) == 3
    finally:
        board.stop()


def test_a_16_bit_result_is_served_as_written(server):
    """The served PNG is the engine's file with the settings added: its 16 bits kept (they were
    re-encoded to 8 by Pillow, while the settings said bit_depth 16)."""
    params = {**TINY, "iterations": 1, "bit_depth": 16, "save_every": 0}
    job_id = server.submit(params).json()["id"]
    job = server.wait(job_id, ("finished",))
    served = server.http.get(job["result"]).content
    on_disk = (server.board.get(job_id).folder / "output" / "result.png").read_bytes()
    assert served[24] == on_disk[24] == 16   # IHDR's bit depth
    assert served.endswith(on_disk[33:])      # the pixels as written, after the added text chunks
    image = Image.open(io.BytesIO(served))
    assert json.loads(image.text["nst:config"])["bit_depth"] == 16 and json.loads(image.text["nst:params"]) == params


def _wait(board, job_id, status, timeout=60.0):
    deadline = time.monotonic() + timeout
    while board.summary(job_id)["status"] != status:
        assert time.monotonic() < deadline, board.summary(job_id)
        time.sleep(0.05)


def test_nst_submit_sends_a_job_shows_progress_and_downloads_the_result(server, tmp_path):
    from typer.testing import CliRunner
    from engine.cli import app

    output = tmp_path / "painted.png"
    result = CliRunner().invoke(app, [
        "submit", str(CONTENT), str(STYLE), "--server", server.url, "-o", str(output), "--size", "64",
        "--iterations", "2", "--maxfun", "2", "--param", 'init="content"', "--preset", "starry_tubingen"])
    assert result.exit_code == 0, result.output
    assert "queued at position" in result.output and "iteration 2/2" in result.output
    assert result.stdout.strip().endswith(str(output))
    image = Image.open(output)
    assert max(image.size) == 64 and json.loads(image.text["nst:params"])["preset"] == "starry_tubingen"


@pytest.mark.parametrize("args, words", [
    (["--server", "http://127.0.0.1:9/"], "cannot reach the server"),
    (["--server", "ftp://example.com/"], "not an http(s) URL"),
    (["--server", "{url}", "--param", "colour=3"], "unknown parameter colour"),
    (["--server", "{url}", "--param", "seed"], "not NAME=JSON"),
    (["--server", "{url}", "-o", "out.jpg"], "ending in .png"),
])
def test_nst_submit_mistakes_are_one_line(server, tmp_path, args, words):
    from typer.testing import CliRunner
    from engine.cli import app

    args = [a.format(url=server.url) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.png")]
    result = CliRunner().invoke(app, ["submit", str(CONTENT), str(STYLE), *args])
    assert result.exit_code == 1 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_job_the_engine_refuses_ends_failed_with_its_reason(server):
    # vgg19 is never exported in the tests' models folder: the engine says so, the job carries it.
    job_id = server.submit({"preset": "pavlos_grandma_woman_with_hat", "size": 64, "iterations": 1}).json()["id"]
    job = server.wait(job_id, ("failed",))
    assert "vgg19" in job["error"] and job["resumable"]
    with server.http.stream("GET", f"api/jobs/{job_id}/events") as stream:
        events = _parse_sse(stream.iter_lines())
    assert events[-1]["event"] == "failed" and events[-1]["data"]["error"] == job["error"]


def test_an_unusable_data_dir_is_one_line(tmp_path):
    from engine.errors import ConfigError
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="choose another --data-dir"):
        JobBoard(blocker, lambda: None)


def test_several_styles_are_kept_with_their_blend_weights(server):
    reply = server.submit({**LONG, "style_blend": [0.7, 0.3]}, styles=(STYLE, CONTENT))
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    server.http.post(f"api/jobs/{job_id}/cancel")
    job = server.http.get(f"api/jobs/{job_id}").json()
    assert job["styles"] == 2 and job["config"]["style_blend"] == [0.7, 0.3]
    assert job["inputs"] == [f"api/jobs/{job_id}/inputs/{name}" for name in ("content", "style-1", "style-2")]
    second = Image.open(io.BytesIO(server.http.get(job["inputs"][2]).content))
    assert second.size == Image.open(CONTENT).size  # the second style is the photo, re-encoded
    server.wait(job_id, ("cancelled",))
