"""The FastAPI application: the job API, the page, and the guard every request passes first.

The guard (an ASGI middleware) refuses, before any route runs: a Host that is not this
server's when it listens on loopback (DNS rebinding), a state-changing request from
another site (Origin / Sec-Fetch-Site), a request without the token when one is set
(bearer header or the HttpOnly cookie the page gets at login), and a job upload with no
or a too-large Content-Length. Every response carries nosniff, a strict CSP and no
framing. The server never fetches a URL.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import struct
import sys
import zlib
from importlib import resources
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders

from .. import __version__
from ..config import TransferConfig
from ..errors import ConfigError, EngineError
from ..presets import PRESETS
from .jobs import INPUT_PATTERN, RESULT, EngineRunner, JobBoard, JobError, snapshot_file
from .params import DEFAULT_SIZE, job_config, parse_params
from .settings import LOOPBACK_NAMES, ServeSettings, is_loopback
from .uploads import decode_upload

COOKIE = "nst_token"
MAX_STYLES = 8
PUBLIC = {("GET", "/"), ("GET", "/healthz"), ("POST", "/api/login")}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SMALL_BODY = 64 * 1024  # any request's body but a job upload's (a login's token, a verb's nothing)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
                                "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
}
STATIC = resources.files("engine.serve") / "static"


class Guard:
    """The checks every request passes before it reaches a route (see the module's docstring)."""

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings
        self.hostnames = {*LOOPBACK_NAMES, settings.host.strip("[]"),
                          *(urlsplit(origin).hostname for origin in settings.allowed_origins)}
        # Upload bodies: every file at its limit, plus room for the form's fields and boundaries.
        self.max_body = settings.max_upload_bytes * (MAX_STYLES + 1) + 1024 * 1024

    def body_limit(self, scope) -> int:
        """The most bytes a request's body may hold: a job upload's, or a login's or a verb's few."""
        return self.max_body if (scope["method"], scope["path"]) == ("POST", "/api/jobs") else SMALL_BODY

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope, Headers(scope=scope))
        if refusal is not None:
            status, message = refusal
            response = JSONResponse({"detail": message}, status)
            response.headers.update(SECURITY_HEADERS)
            return await response(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        limit, received = self.body_limit(scope), 0

        async def receive_limited():
            # A body sent without a Content-Length (chunked) past the limit: a 413 from the route that
            # reads it, and the server never holds more than the limit of it.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"the request body is over the {limit} bytes this request may send")
            return message

        await self.app(scope, receive_limited, send_with_headers)

    def refusal(self, scope, headers: Headers) -> tuple[int, str] | None:
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if is_loopback(self.settings.host) and _hostname(host) not in self.hostnames:
            return 403, (f"Host {host!r} refused: this server listens on loopback and answers only to "
                         "localhost, 127.0.0.1 and --allow-origin hosts (a guard against DNS rebinding)")
        if method in UNSAFE_METHODS:
            origin = headers.get("origin")
            same = origin is not None and (urlsplit(origin).netloc == host or origin in self.settings.allowed_origins)
            if origin is not None and not same:
                return 403, f"cross-site request refused: Origin {origin!r} is not this server ({host})"
            if headers.get("sec-fetch-site") == "cross-site":
                return 403, "cross-site request refused (Sec-Fetch-Site: cross-site)"
        if self.settings.token and not self.public(method, path) and not self.authorised(headers):
            return 401, ("this server needs its token: send 'Authorization: Bearer <token>' "
                         "or log in on the page")
        length = headers.get("content-length")
        if method == "POST" and path == "/api/jobs":
            if length is None or not length.isascii() or not length.isdigit():
                return 411, "send the upload with a Content-Length header"
            if int(length) > self.max_body:
                return 413, (f"the upload is {int(length) / 2**20:.1f} MB, over the server's limit of "
                             f"{self.settings.max_upload_mb:g} MB per image (--max-upload-mb) for up to "
                             f"{MAX_STYLES + 1} images")
        elif length is not None and length.isascii() and length.isdigit() and int(length) > SMALL_BODY:
            return 413, f"the request body is {int(length)} bytes, over the {SMALL_BODY} this request may send"
        return None

    @staticmethod
    def public(method: str, path: str) -> bool:
        return (method, path) in PUBLIC or (method == "GET" and path.startswith("/static/"))

    def authorised(self, headers: Headers) -> bool:
        token = self.settings.token.encode()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), token)


def _hostname(host: str) -> str:
    return (urlsplit(f"//{host}").hostname or "") if host else ""


def _cookies(header: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in header.split(";"))
    return {name: value for name, _, value in pairs if name}


def create_app(settings: ServeSettings, board: JobBoard | None = None) -> FastAPI:
    """The application for ``settings``; its job board (and workers) start with the app, stop with it."""
    board = board or _board(settings)

    async def lifespan(app):
        board.start()
        yield
        await asyncio.to_thread(board.stop)

    app = FastAPI(title="nst serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  description="Neural style transfer jobs: submit, follow, cancel, fetch.")
    app.state.board = board
    app.add_middleware(Guard, settings=settings)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError):
        return JSONResponse({"detail": str(exc)}, getattr(exc, "status", 400))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, 400)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/healthz", summary="Liveness and queue counts")
    async def healthz():
        return {"status": "ok", "version": __version__, "workers": board.workers, "jobs": board.counts()}

    @app.post("/api/login", summary="Exchange the token for an HttpOnly cookie (for the page)")
    async def login(request: Request):
        try:
            given = str((await request.json()).get("token", ""))
        except (ValueError, AttributeError):
            given = ""
        if not settings.token or not hmac.compare_digest(given.encode(), settings.token.encode()):
            return JSONResponse({"detail": "wrong token"}, 401)
        response = JSONResponse({"ok": True})
        # Secure when the page came over HTTPS (directly, or through a TLS proxy: the browser's Origin says so).
        secure = request.url.scheme == "https" or request.headers.get("origin", "").startswith("https://")
        response.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict", path="/", secure=secure)
        return response

    @app.get("/api/options", summary="Presets, defaults and the server's limits")
    async def options():
        return {"presets": {name: TransferConfig(**values).to_dict() for name, values in PRESETS.items()},
                "defaults": {**TransferConfig().to_dict(), "size": DEFAULT_SIZE},
                "limits": {"max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels,
                           "max_styles": MAX_STYLES},
                "auth": bool(settings.token)}

    @app.post("/api/jobs", status_code=202, summary="Queue a job; answers at once with its id and position")
    async def submit(content: Annotated[UploadFile, File(description="The photo")],
                     style: Annotated[list[UploadFile], File(description="One or more paintings")],
                     params: Annotated[str, Form(description="JSON object of stylize settings")] = "{}"):
        if len(style) > MAX_STYLES:
            raise ConfigError(f"{len(style)} style images: at most {MAX_STYLES} per job")
        parsed = parse_params(params)
        limits = (settings.max_upload_bytes, settings.max_pixels)
        content_image = decode_upload(await _read(content, limits[0]), "content", *limits)
        styles = [decode_upload(await _read(s, limits[0]), f"style {k}", *limits) for k, s in enumerate(style, 1)]
        config = job_config(parsed, [s.size for s in styles], content_image.size, settings.max_pixels)
        job, position = await asyncio.to_thread(board.submit, parsed, config, content_image, styles)
        return {"id": job.id, "position": position, "status": job.status, "url": f"api/jobs/{job.id}"}

    @app.get("/api/jobs", summary="Every job, newest first: the queue and the history")
    async def jobs():
        return {"jobs": board.list()}

    @app.get("/api/jobs/{job_id}", summary="A job's status, iteration, loss, times and error")
    async def job(job_id: str):
        return board.summary(job_id)

    @app.get("/api/jobs/{job_id}/events", summary="Server-Sent Events of a job, resumable with Last-Event-ID")
    async def events(job_id: str, request: Request):
        board.get(job_id)
        header = request.headers.get("last-event-id", "0")
        last = int(header) if header.isascii() and header.isdigit() else 0

        async def stream():
            nonlocal last
            idle = 0.0
            while True:
                try:
                    pending, active = board.events_after(job_id, last)
                except JobError:
                    return  # deleted
                for event in pending:
                    last = event["id"]
                    yield f"id: {last}\nevent: {event['event']}\ndata: {json.dumps(event['data'])}\n\n"
                if not active and not pending:
                    return
                if await request.is_disconnected():
                    return
                idle = 0.0 if pending else idle + 0.1
                if idle >= 15:  # a comment keeps proxies from closing a quiet stream
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/result", summary="The finished picture (PNG, settings in its metadata)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def result(job_id: str, download: bool = False):
        return _png(board, job_id, RESULT, f"nst-{job_id}.png", download)

    @app.get("/api/jobs/{job_id}/snapshots/{iteration}", summary="The picture after an iteration (PNG)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def snapshot(job_id: str, iteration: int, download: bool = False):
        return _png(board, job_id, snapshot_file(iteration), f"nst-{job_id}-iteration-{iteration}.png", download)

    @app.get("/api/jobs/{job_id}/inputs/{name}", summary="An input as the server re-encoded it (content, style-K)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def job_input(job_id: str, name: str):
        if not INPUT_PATTERN.fullmatch(name):
            raise JobError(f"job {job_id} has no input {name!r}: inputs are content, style-1, style-2 ...", 404)
        return FileResponse(board.file(job_id, "inputs", f"{name}.png"), media_type="image/png")

    @app.get("/api/jobs/{job_id}/record", summary="The run record (JSON)")
    async def record(job_id: str):
        return FileResponse(board.file(job_id, "output", "result.json"), media_type="application/json")

    @app.post("/api/jobs/{job_id}/cancel", summary="Take a queued job off the queue or stop a running one")
    async def cancel(job_id: str):
        return board.cancel(job_id)

    @app.post("/api/jobs/{job_id}/resume", summary="Queue an interrupted, cancelled or failed job again")
    async def resume(job_id: str):
        return board.resume(job_id)

    @app.delete("/api/jobs/{job_id}", summary="Remove a job that is not queued or running, and its files")
    async def delete(job_id: str):
        await asyncio.to_thread(board.delete, job_id)
        return {"deleted": job_id}

    return app


def _board(settings: ServeSettings) -> JobBoard:
    """The jobs of ``settings.data_dir``, run by engines in this process or on Ray actors."""
    if settings.ray_address:
        from .remote import RayEngineRunner, connect

        workers = connect(settings.ray_address, settings.threads, settings.workers)
        return JobBoard(settings.data_dir, lambda: RayEngineRunner(
            settings.models_dir, settings.provider, settings.threads), workers, settings.max_queued)
    return JobBoard(settings.data_dir, lambda: EngineRunner(
        settings.models_dir, settings.provider, settings.threads), settings.workers or 1, settings.max_queued)


async def _read(upload: UploadFile, max_bytes: int) -> bytes:
    # One byte past the limit is enough to know it is over.
    return await upload.read(max_bytes + 1)


def _png(board: JobBoard, job_id: str, name: str, filename: str, download: bool) -> Response:
    """A picture of a job as PNG, the job's settings in its text chunks (read by most image viewers);
    its pixels as the engine wrote them (a 16-bit result stays 16-bit)."""
    path = board.file(job_id, "output", name)
    job = board.get(job_id)
    texts = {"Software": f"nst-engine {__version__}", "nst:params": json.dumps(job.params),
             "nst:config": json.dumps(job.config)}
    disposition = "attachment" if download else "inline"
    return Response(_with_texts(path.read_bytes(), texts), media_type="image/png",
                    headers={"Content-Disposition": f'{disposition}; filename="{filename}"',
                             "Cache-Control": "no-cache"})


def _with_texts(png: bytes, texts: dict[str, str]) -> bytes:
    """``png`` (the engine's own file) with an iTXt chunk (UTF-8 text) per item after its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    # iTXt: keyword, NUL, compression flag and method (0, 0), empty language tag and translated keyword.
    texts_bytes = b"".join(chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))
                           for key, value in texts.items())
    return png[:header_end] + texts_bytes + png[header_end:]


def run_server(settings: ServeSettings) -> None:
    """Listen until Ctrl-C; running jobs then show as interrupted, resumable after a restart."""
    import uvicorn

    app = create_app(settings)  # joins the Ray cluster first with --ray: a wrong address fails here
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    where = f", run on Ray actors, {app.state.board.workers} at once" if settings.ray_address else ""
    print(f"serving http://{host}:{settings.port}/ (jobs in {settings.data_dir}{where}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    # Open event streams never end by themselves: after 2 s of shutdown they are closed, then the
    # workers stop (their running jobs show as interrupted).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=2)
