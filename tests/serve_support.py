"""A real `nst serve` on a loopback port for the server's tests (uvicorn in a thread)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from engine.serve.app import create_app  # noqa: E402
from engine.serve.jobs import EngineRunner, JobBoard  # noqa: E402
from engine.serve.settings import ServeSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
# A job that takes well under a second per iteration on 2 cores.
TINY = {"size": 64, "iterations": 2, "maxfun": 2, "init": "content"}
# One that runs long enough to be cancelled while running.
LONG = {"size": 64, "iterations": 500, "maxfun": 4, "init": "content"}


_RUNNERS: dict[Path, EngineRunner] = {}


def shared_runner(models_dir: Path) -> EngineRunner:
    """One warm engine for every test server (an Engine may run jobs from several threads):
    only the first job of the session pays for opening its sessions."""
    if models_dir not in _RUNNERS:
        _RUNNERS[models_dir] = EngineRunner(models_dir, "cpu", 2)
    return _RUNNERS[models_dir]


def board_for(settings: ServeSettings) -> JobBoard:
    return JobBoard(settings.data_dir, lambda: shared_runner(settings.models_dir), settings.workers or 1,
                    settings.max_queued)


class LiveServer:
    """``create_app(settings)`` served by uvicorn on 127.0.0.1 and a free port."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        # With --ray the app makes its own board: its workers are Ray actors.
        self.app = create_app(settings, None if settings.ray_address else board_for(settings))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def board(self):
        return self.app.state.board

    def submit(self, params: dict, content: Path = CONTENT, styles: tuple[Path, ...] = (STYLE,), **kwargs):
        import json
        files = [("content", (content.name, content.read_bytes()))]
        files += [("style", (s.name, s.read_bytes())) for s in styles]
        return self.http.post("api/jobs", files=files, data={"params": json.dumps(params)}, **kwargs)

    def wait(self, job_id: str, statuses: tuple[str, ...], timeout: float = 60.0) -> dict:
        return self.wait_for(job_id, lambda job: job["status"] in statuses, timeout)

    def wait_for(self, job_id: str, condition, timeout: float = 60.0) -> dict:
        """The job's summary once ``condition(summary)`` holds (polled)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"api/jobs/{job_id}").json()
            if condition(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} (iteration {job['iteration']}) "
                                     f"after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)


def serve_settings(data_dir: Path, models_dir: Path, **changes) -> ServeSettings:
    return ServeSettings(**{"data_dir": data_dir, "models_dir": models_dir, "provider": "cpu", "threads": 2,
                            "port": 0, **changes})
