"""`nst serve` is safe by default: each attack from the issue is tried on a real server and refused."""
from __future__ import annotations

import http.client
import io
import json
import os
import struct
import zlib

import pytest
from PIL import Image
from starlette.datastructures import Headers
from typer.testing import CliRunner

from serve_support import CONTENT, STYLE, TINY, LiveServer, serve_settings

from engine.cli import app
from engine.errors import ConfigError
from engine.serve.settings import ServeSettings

TOKEN = "correct-horse-battery-staple"
SECRET = "the-secret-outside-the-data-dir"


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    live = LiveServer(serve_settings(tmp_path_factory.mktemp("serve-sec"), models_dir,
                                     max_upload_mb=0.25, max_pixels=1_000_000))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def job(server):
    """A finished job to aim at."""
    job_id = server.submit(TINY).json()["id"]
    server.wait(job_id, ("finished",))
    return job_id


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text(SECRET)
    return path


def raw_get(server, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A request sent byte for byte as written (no client normalises the '..' away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", f"127.0.0.1:{server.port}")
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.endheaders()
    reply = connection.getresponse()
    body = reply.read()
    connection.close()
    return reply.status, body


@pytest.mark.parametrize("path", [
    "/api/jobs/../../../etc/passwd",
    "/api/jobs/%2e%2e/%2e%2e/etc/passwd",
    "/api/jobs/..%2f..%2fetc%2fpasswd/result",
    "/api/jobs/%2e%2e%2f%2e%2e%2fsecret/record",
    "/api/jobs//etc/passwd/result",
    "/api/jobs/%2Fetc%2Fpasswd/record",
    "/api/jobs/{job}/snapshots/..%2f..%2f..%2fetc%2fpasswd",
    "/api/jobs/{job}/inputs/..%2fparams",
    "/api/jobs/{job}/inputs/%2e%2e%2f%2e%2e%2fjob",
    "/api/jobs/{job}/inputs/%2Fetc%2Fpasswd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e/jobs.py",
])
def test_traversal_is_refused(server, job, path):
    status, body = raw_get(server, path.format(job=job))
    assert status in (400, 404), (status, body[:200])
    assert b"root:" not in body and b"import" not in body and b'"status"' not in body


def test_a_symlink_planted_in_a_job_folder_is_not_followed_out(server, job, secret):
    output = server.board.root / job / "output"
    snapshot = output / "result_at_iteration_1.png"
    snapshot.rename(output / "kept.png")
    snapshot.symlink_to(secret)
    (output / "result.json").rename(output / "kept.json")
    (output / "result.json").symlink_to(secret)
    try:
        for path in (f"/api/jobs/{job}/snapshots/1", f"/api/jobs/{job}/record"):
            status, body = raw_get(server, path)
            assert status == 404 and SECRET.encode() not in body
    finally:
        snapshot.unlink()
        (output / "kept.png").rename(snapshot)
        (output / "result.json").unlink()
        (output / "kept.json").rename(output / "result.json")
    assert server.http.get(f"api/jobs/{job}/snapshots/1").status_code == 200


def test_a_symlinked_job_folder_is_never_loaded(server, job, tmp_path):
    from engine.serve.jobs import JobBoard
    planted = "20200101t000000-deadbeef"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "job.json").write_text((server.board.root / job / "job.json").read_text().replace(job, planted))
    (server.board.root / planted).symlink_to(target, target_is_directory=True)
    try:
        board = JobBoard(server.board.root.parent, lambda: None)
        assert planted not in [j["id"] for j in board.list()]
        assert job in [j["id"] for j in board.list()]
    finally:
        (server.board.root / planted).unlink()


def test_an_oversized_file_is_refused_with_the_limit(server):
    big = io.BytesIO()
    noise = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))  # ~480 kB as PNG
    noise.save(big, format="PNG")
    reply = server.http.post("api/jobs", files=[("content", ("big.png", big.getvalue())),
                                                ("style", ("s.jpg", STYLE.read_bytes()))])
    assert reply.status_code == 413
    assert "0.25 MB" in reply.json()["detail"] and "--max-upload-mb" in reply.json()["detail"]


def test_an_oversized_body_is_refused_before_it_is_read(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/api/jobs")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10 ** 10))
    connection.endheaders()  # no body is ever sent: the answer comes from the headers alone
    reply = connection.getresponse()
    assert reply.status == 413 and "--max-upload-mb" in json.loads(reply.read())["detail"]
    connection.close()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height grey pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * (width + 1) * 64)  # the first rows only: the header is what is checked
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(2000, 2000), (100_000, 100_000)])
def test_a_decompression_bomb_is_refused_with_the_pixel_limit(server, width, height):
    reply = server.http.post("api/jobs", files=[("content", ("bomb.png", _png_claiming(width, height))),
                                                ("style", ("s.jpg", STYLE.read_bytes()))])
    assert reply.status_code == 413
    detail = reply.json()["detail"]
    assert "--max-pixels" in detail and "limit of 1000000 pixels" in detail
    if width * height < Image.MAX_IMAGE_PIXELS:  # beyond it, Pillow refuses before the size is known
        assert f"{width}x{height}" in detail


@pytest.mark.parametrize("name, data", [
    ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    ("x.html", b"<html><script>alert(1)</script></html>"),
    ("x.png", b"\x89PNG\r\n\x1a\n<script>alert(1)</script>"),
])
def test_anything_but_a_raster_image_is_refused(server, name, data):
    reply = server.http.post("api/jobs", files=[("content", (name, data)), ("style", ("s.jpg", STYLE.read_bytes()))])
    assert reply.status_code in (400, 415)
    assert "content" in reply.json()["detail"]


def test_uploads_are_re_encoded_never_served_as_uploaded(server):
    image = io.BytesIO()
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Comment", "<script>alert(1)</script>")
    Image.open(CONTENT).convert("RGB").save(image, format="PNG", pnginfo=info)
    reply = server.submit({**TINY, "iterations": 1}, content=_write(server, image.getvalue()))
    job_id = reply.json()["id"]
    served = server.http.get(f"api/jobs/{job_id}/inputs/content")
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert b"<script>" not in served.content and served.content != image.getvalue()
    server.http.post(f"api/jobs/{job_id}/cancel")


def _write(server, data: bytes):
    path = server.board.root.parent / "upload.png"
    path.write_bytes(data)
    return path


def test_every_answer_carries_nosniff_and_a_strict_csp(server, job):
    for path in ("", "healthz", "api/jobs", f"api/jobs/{job}/result", "api/jobs/nope", "static/app.js"):
        headers = server.http.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_a_cross_site_state_change_is_refused(server, job, headers):
    for method, path in (("POST", f"api/jobs/{job}/cancel"), ("DELETE", f"api/jobs/{job}"), ("POST", "api/jobs")):
        reply = server.http.request(method, path, headers=headers)
        assert reply.status_code == 403 and "cross-site" in reply.json()["detail"], (method, path)
    assert server.http.get(f"api/jobs/{job}").json()["status"] == "finished"


def test_an_allowed_proxy_origin_passes_and_others_do_not(tmp_path):
    from engine.serve.app import Guard
    guard = Guard(None, ServeSettings(data_dir=tmp_path, allowed_origins=("https://paint.example.org/",)))
    scope = {"method": "POST", "path": "/api/jobs/x/cancel"}
    proxied = {"host": "paint.example.org", "origin": "https://paint.example.org"}
    assert guard.refusal(scope, Headers(proxied)) is None
    assert guard.refusal(scope, Headers({**proxied, "origin": "https://evil.example"}))[0] == 403
    assert guard.refusal(scope, Headers({**proxied, "host": "evil.example"}))[0] == 403
    with pytest.raises(ConfigError, match="scheme://host"):
        ServeSettings(allowed_origins=("paint.example.org/nst",))


def test_a_same_origin_request_from_the_page_passes(server, job):
    reply = server.http.post(f"api/jobs/{job}/cancel", headers={"Origin": server.url.rstrip("/")})
    assert reply.status_code == 409  # past the guard: a finished job has nothing to cancel


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "192.168.1.5", "localhost.evil.example"])
def test_a_dns_rebound_host_is_refused(server, host):
    reply = server.http.get("api/jobs", headers={"Host": host})
    assert reply.status_code == 403 and "DNS rebinding" in reply.json()["detail"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_a_non_loopback_bind_without_a_token_is_refused(host, monkeypatch):
    monkeypatch.delenv("NST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="without a token"):
        ServeSettings(host=host)
    result = CliRunner().invoke(app, ["serve", "--host", host, "--port", "1"])
    assert result.exit_code == 1 and "refusing to listen" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_short_token_is_refused_and_nst_token_is_read(monkeypatch):
    with pytest.raises(ConfigError, match="too short"):
        ServeSettings(host="0.0.0.0", token="abc")
    monkeypatch.setenv("NST_TOKEN", TOKEN)
    assert ServeSettings(host="0.0.0.0").token == TOKEN


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, models_dir):
    live = LiveServer(serve_settings(tmp_path_factory.mktemp("serve-token"), models_dir, token=TOKEN))
    yield live
    live.stop()


def test_with_a_token_every_api_request_needs_it(token_server):
    http = token_server.http
    for method, path in (("GET", "api/jobs"), ("GET", "api/options"), ("POST", "api/jobs"),
                         ("GET", "api/jobs/20200101t000000-0123abcd/result")):
        reply = http.request(method, path)
        assert reply.status_code == 401 and "token" in reply.json()["detail"], path
        wrong = http.request(method, path, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401
    assert http.get("api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.get("").status_code == 200 and http.get("healthz").status_code == 200  # the page can load


def test_login_sets_an_httponly_cookie_that_then_authorises(token_server):
    import httpx
    with httpx.Client(base_url=token_server.url) as browser:
        assert browser.post("api/login", json={"token": "wrong-token-wrong-token"}).status_code == 401
        reply = browser.post("api/login", json={"token": TOKEN})
        assert reply.status_code == 200
        cookie = reply.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain http here
        assert browser.get("api/jobs").status_code == 200
        # A page served over HTTPS (here: a TLS proxy in front, as the browser's Origin tells) gets a Secure cookie.
        proxied = browser.post("api/login", json={"token": TOKEN},
                               headers={"Origin": f"https://127.0.0.1:{token_server.port}"})
        assert proxied.status_code == 200 and "; secure" in proxied.headers["set-cookie"].lower()


def test_the_server_never_fetches_a_url(server):
    reply = server.http.post("api/jobs", data={"content": "http://127.0.0.1:1/x.png", "style": "file:///etc/passwd"})
    assert reply.status_code == 400


def _submit_raw_params(server, text: str):
    """A job whose params field is sent as written (json.dumps would write NaN too, but not on purpose)."""
    files = [("content", (CONTENT.name, CONTENT.read_bytes())), ("style", (STYLE.name, STYLE.read_bytes()))]
    return server.http.post("api/jobs", files=files, data={"params": text})


@pytest.mark.parametrize("params, words", [
    # Files a client names: never read (a mask path told whether a file exists, and read the image).
    ({**TINY, "content_masks": ["/etc/passwd"]}, "content_masks is not allowed on a server"),
    ({**TINY, "style_masks": ["/etc/hostname"]}, "style_masks is not allowed on a server"),
    ({**TINY, "init": ["content"]}, "is not allowed on a server"),
    ({**TINY, "init": {"a": 1}}, "is not allowed on a server"),
    # Booleans that are not (bool("no") is True) and counts that would run away.
    ({**TINY, "gif": "no"}, "gif must be true or false"),
    ({**TINY, "tileable": 1}, "tileable must be true or false"),
    ({**TINY, "scales": 50_000_000_000}, "scales must be at most 12"),
    ({**TINY, "scales": 2000}, "scales must be at most 12"),
    # A style image worked on past the server's pixel limit, and a limit below an upload's own size.
    ({**TINY, "size": 256, "style_scale": 8}, "pixel style image, over the server's limit"),
    ({**TINY, "max_megapixels": 0.001}, "max_megapixels 0.001 is below the content image's"),
])
def test_params_a_server_must_not_take_are_a_400_before_anything_is_queued(server, params, words):
    before = server.http.get("api/jobs").json()
    reply = server.submit(params)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["detail"]
    assert server.http.get("api/jobs").json() == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_400_not_a_job_that_breaks_the_list(server, constant):
    """Python's json takes NaN; a job holding it made every later GET /api/jobs a 500, restarts included."""
    reply = _submit_raw_params(server, '{"size": 64, "iterations": 1, "maxfun": 2, "tileable": %s}' % constant)
    assert reply.status_code == 400 and constant.lstrip("-") in reply.json()["detail"]
    assert server.http.get("api/jobs").status_code == 200


def test_a_small_request_body_is_limited_and_a_chunked_one_cut_off(token_server):
    """A login needs no token: its body must not be able to hold the server's memory."""
    reply = token_server.http.post("api/login", content=b"x" * (1 << 20))
    assert reply.status_code == 413 and "over the 65536 this request may send" in reply.json()["detail"]

    def chunks():
        for _ in range(64):
            yield b"x" * (1 << 16)   # 4 MiB in all, no Content-Length

    reply = token_server.http.post("api/login", content=chunks())
    assert reply.status_code == 413 and "over the 65536 bytes" in reply.json()["detail"]
    assert token_server.http.get("healthz").status_code == 200


def test_a_stray_last_event_id_is_read_as_none(server, job):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("GET", f"/api/jobs/{job}/events", skip_accept_encoding=True)
    connection.putheader("Last-Event-ID", "\u00b2".encode("latin-1"))   # a digit to str.isdigit, not to int
    connection.endheaders()
    reply = connection.getresponse()
    body = reply.read().decode()
    connection.close()
    assert reply.status == 200 and "event: finished" in body


def test_a_loopback_address_other_than_127_0_0_1_answers_to_its_own_name(tmp_path):
    from engine.serve.app import Guard
    guard = Guard(None, ServeSettings(data_dir=tmp_path, host="127.0.0.2"))
    scope = {"method": "GET", "path": "/healthz"}
    assert guard.refusal(scope, Headers({"host": "127.0.0.2:8000"})) is None
    assert guard.refusal(scope, Headers({"host": "evil.example:8000"}))[0] == 403
