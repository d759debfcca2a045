"""``nst submit``'s side: send a job to a server, follow its events, download the result.

Standard library only, so a machine without the ``serve`` extra can use a server.
"""
from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urljoin, urlsplit

from ..errors import EngineError
from ..io.files import atomic_write_bytes

TERMINAL_EVENTS = ("finished", "failed", "cancelled", "interrupted")


class ServerError(EngineError):
    """The server refused a request or could not be reached; the message is the server's."""


@dataclass(frozen=True)
class ServerEvent:
    id: int
    event: str
    data: dict[str, Any]


class Client:
    """Talks to ``nst serve`` at ``server`` (http://host:port/, a sub-path is fine), with ``token`` if set."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0):
        if urlsplit(server).scheme not in ("http", "https") or not urlsplit(server).netloc:
            raise ServerError(f"--server {server!r} is not an http(s) URL: e.g. http://127.0.0.1:8080/")
        self.base = server if server.endswith("/") else server + "/"
        self.token = token
        self.timeout = timeout

    def _request(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                 method: str | None = None):
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(urljoin(self.base, path), data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except ValueError:
                detail = exc.reason
            raise ServerError(f"the server refused ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the server at {self.base}: {reason}") from None

    def submit(self, content: Path, styles: list[Path], params: dict[str, Any]) -> dict[str, Any]:
        """POST /api/jobs; the answer: id, position, status."""
        files = [("content", Path(content))] + [("style", Path(s)) for s in styles]
        for _, path in files:
            if not path.is_file():
                raise ServerError(f"cannot read image '{path}': no such file, check the path")
        boundary = secrets.token_hex(16)
        parts = []
        for field, path in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
                     f"{json.dumps(params)}\r\n--{boundary}--\r\n".encode())
        body = b"".join(parts)
        with self._request("api/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}) as reply:
            return json.loads(reply.read())

    def events(self, job_id: str, last: int = 0) -> Iterator[ServerEvent]:
        """The job's events until it ends; a dropped stream is picked up where it stopped (Last-Event-ID)."""
        while True:
            with self._request(f"api/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)}) as stream:
                fields: dict[str, str] = {}
                for raw in stream:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
                        continue
                    if "data" in fields:
                        event = ServerEvent(int(fields.get("id", last)), fields.get("event", "message"),
                                            json.loads(fields["data"]))
                        last = event.id
                        yield event
                        if event.event in TERMINAL_EVENTS:
                            return
                    fields = {}
            if self.status(job_id)["status"] in TERMINAL_EVENTS:
                return

    def status(self, job_id: str) -> dict[str, Any]:
        with self._request(f"api/jobs/{job_id}") as reply:
            return json.loads(reply.read())

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._request(f"api/jobs/{job_id}/cancel", b"", method="POST") as reply:
            return json.loads(reply.read())

    def download(self, job_id: str, output: Path) -> Path:
        """The result PNG, written atomically to ``output``."""
        with self._request(f"api/jobs/{job_id}/result") as reply:
            atomic_write_bytes(Path(output), reply.read())
        return Path(output)


def submit_and_wait(client: Client, content: Path, styles: list[Path], params: dict[str, Any], output: Path,
                    on_event: Callable[[ServerEvent], None]) -> ServerEvent:
    """Send the job, pass every event to ``on_event``, download the result when it finished.
    Returns the last event; a job that failed raises ServerError with the server's reason."""
    job = client.submit(content, styles, params)
    last = ServerEvent(0, "queued", {"job": job["id"], "position": job["position"]})
    try:
        for event in client.events(job["id"]):
            on_event(event)
            last = event
    except KeyboardInterrupt:
        client.cancel(job["id"])
        raise
    if last.event == "failed":
        raise ServerError(f"job {job['id']} failed: {last.data.get('error')}")
    if last.event == "finished":
        client.download(job["id"], output)
    return last
