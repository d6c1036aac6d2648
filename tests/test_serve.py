"""``advx serve`` as a real server process, driven by a real HTTP client: a hardened tile, every
kind of bad request (4xx JSON, the server stays up), and concurrent requests batched together.
Then each limit of the service, on a tiny model in this process (each test fails without its
limit): the bounded queue (429), a request given up stops its slot, the streamed upload cap,
the label-set cache, the bearer token, the error bodies, large images, /healthz."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, fields: dict, file: bytes | None, filename: str = "tile.png",
          timeout: float = 300) -> tuple[int, dict, bytes]:
    """multipart/form-data POST with the standard library."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                   f"{v}\r\n".encode())
    if file is not None:
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                   f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                   .encode())
        body.write(file + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=body.getvalue(), method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "ADVX_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    cmd = [sys.executable, "-m", "advx.cli.main", "serve", "--port", str(port),
           "--label-set", "cat,espresso,bus", "--surrogates", "effnet-lite0", "--verifiers",
           "effnet-lite0", "--transforms", "none", "--steps", "3", "--eps", "8",
           "--max-pixels", "4000000", "--max-upload-mb", "2", "--batch-size", "8"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()}")
        try:
            if _get(base + "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"server did not come up: {log.read_text()}")
    yield base, proc
    proc.terminate()
    proc.wait(timeout=30)


def _tile(i: int = 0) -> np.ndarray:
    import skimage.data as sd

    src = sd.chelsea()
    return np.ascontiguousarray(src[40 + 7 * i : 40 + 7 * i + 96, 100 : 196])


def test_hardens_a_tile(server):
    base, _ = server
    tile = _tile()
    status, headers, body = _post(base + "/harden", {"label": "cat"}, _png(tile))
    assert status == 200 and headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert out.shape == tile.shape
    assert np.abs(out.astype(int) - tile.astype(int)).max() <= 8
    record = json.loads(headers["x-advx-result"])
    assert record["label"] == "cat" and record["status"] in ("fooled", "unfooled")
    assert record["linf"] <= 8 + 1e-6 and "effnet-lite0" in record["margins"]
    assert _get(base + "/models")[1]["label_set"] == ["cat", "espresso", "bus"]


def test_bad_requests_get_4xx_json_and_the_server_stays_up(server):
    base, proc = server
    cases = [
        ({"label": "cat"}, b"", 400, "empty"),
        ({"label": "cat"}, b"this is not an image\n" * 10, 400, "not a usable image"),
        ({}, _png(_tile()), 422, "label"),
        ({"label": "zebra"}, _png(_tile()), 400, "not in the label set"),
        ({"label": "cat", "eps": "100"}, _png(_tile()), 422, "eps"),
        ({"label": "cat"}, os.urandom(3 << 20), 413, "upload over"),
    ]
    bomb = io.BytesIO()
    Image.new("RGB", (5000, 5000), (10, 20, 30)).save(bomb, "PNG")  # 25 Mpx, a few kB
    cases.append(({"label": "cat"}, bomb.getvalue(), 413, "decompression bomb"))
    for fields, data, want, text in cases:
        status, headers, body = _post(base + "/harden", fields, data)
        assert status == want, (fields, body[:200])
        assert headers["content-type"] == "application/json"
        assert text in json.loads(body)["error"]
    status, _, _ = _post(base + "/harden", {"label": "cat"}, None)  # no file at all
    assert status == 422
    assert proc.poll() is None and _get(base + "/healthz")[0] == 200


def test_concurrent_requests_are_batched_and_all_answered(server):
    base, _ = server
    before = _get(base + "/healthz")[1]
    tiles = [_tile(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda t: _post(base + "/harden", {"label": "cat"}, _png(t)), tiles))
    for tile, (status, _headers, body) in zip(tiles, answers, strict=True):
        assert status == 200
        out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert out.shape == tile.shape and np.abs(out.astype(int) - tile.astype(int)).max() <= 8
    deadline = time.time() + 10  # a reply is counted once it is sent
    while (after := _get(base + "/healthz")[1])["served"] < before["served"] + 8:
        assert time.time() < deadline
        time.sleep(0.1)
    assert after["served"] == before["served"] + 8
    assert after["batches"] - before["batches"] < 8, "concurrent requests share scheduler runs"


# --------------------------------------------------------------------------- limits, tiny model

LABELS = ("cat", "dog", "bus")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import tiny

    d = tmp_path_factory.mktemp("tiny-serve")
    return f"timm:test_efficientnet/{tiny.save_tiny_timm_checkpoint(d)}"


def _service(tiny_model: str, **kw):
    from advx.engine.config import HardenConfig
    from advx.engine.serve.service import HardenService

    cfg = kw.pop("config", None) or HardenConfig(steps=kw.pop("steps", 2), transforms="none",
                                                 batch_size=4, eps_rungs=1)
    return HardenService(kw.pop("label_set", LABELS), surrogates=[tiny_model],
                         verifiers=[tiny_model], config=cfg, max_batch=4, **kw)


def _endless(tiny_model: str, **kw):
    """A service whose images are never fooled (the margin asked is out of reach): each request
    runs to its 1000 steps unless it is stopped."""
    from advx.engine.config import HardenConfig

    cfg = HardenConfig(steps=1000, transforms="none", batch_size=4, eps_rungs=1,
                       required_margin=1e9)
    return _service(tiny_model, config=cfg, **kw)


class _Running:
    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _serve(app) -> _Running:
    return _Running(app)


def _health(base: str, token: str | None = None) -> dict:
    req = urllib.request.Request(base + "/healthz", headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _multipart(fields: dict, file: bytes | None, boundary: str = "b0undary") -> bytes:
    body = b""
    for k, v in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                 .encode())
    if file is not None:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                 f"filename=\"t.png\"\r\n\r\n").encode() + file + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.encode() + body)
    return s


def test_a_full_queue_answers_429_at_once(tiny_model):
    from advx.engine.serve.http import create_app

    service = _service(tiny_model, max_queue=2, start=False)  # nothing drains the queue yet
    with _serve(create_app(service)) as srv, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(_post, srv.base + "/harden", {"label": "cat"}, _png(_tile(i)))
                   for i in range(2)]
        _wait(lambda: service.pending() == 2, 30, "two requests queued")
        t0 = time.monotonic()
        status, headers, body = _post(srv.base + "/harden", {"label": "cat"}, _png(_tile(3)))
        assert status == 429 and time.monotonic() - t0 < 1.0
        assert int(headers["retry-after"]) >= 1 and "queue full" in json.loads(body)["error"]
        health = _health(srv.base)
        assert health["queued"] == 2 and health["refused"] == 1 and not health["busy"]
        service.start()
        assert [f.result(timeout=120)[0] for f in waiting] == [200, 200]
        _wait(lambda: _health(srv.base)["served"] == 2, 10, "two replies counted")
    service.close()


def test_a_request_given_up_leaves_the_batch_at_the_next_step(tiny_model):
    """The scheduler hook: an image whose should_stop turns true is in no further attack step,
    has no result, and the other image of its batch goes on."""
    service = _endless(tiny_model, start=False)
    h = service.hardener(LABELS, 8.0, 40)
    attack = h.scheduler.attack
    rows, stop = [], {"now": False}
    step = attack.step

    def counting(state, *a, **kw):
        rows.append((stop["now"], len(state)))
        if len(rows) == 3:
            stop["now"] = True  # image 0's caller gives up during the third step
        return step(state, *a, **kw)

    attack.step = counting
    try:
        results = h.run([_tile(0), _tile(1)], ["cat", "dog"],
                        should_stop=lambda i: i == 0 and stop["now"])
    finally:
        attack.step = step
    assert results[0] is None and results[1] is not None and results[1].steps > 3
    assert [n for _flag, n in rows[:3]] == [2, 2, 2]
    assert all(n == 1 for _flag, n in rows[3:])  # image 1 alone from the next step on
    assert len(rows) == results[1].steps


def test_a_client_that_disconnects_stops_its_work(tiny_model):
    from advx.engine.serve.http import create_app

    service = _endless(tiny_model)
    with _serve(create_app(service)) as srv:
        body = _multipart({"label": "cat"}, _png(_tile()))
        s = _raw(srv.port, f"POST /harden HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                           f"form-data; boundary=b0undary\r\nContent-Length: {len(body)}\r\n\r\n",
                 body)
        _wait(lambda: service.running == 1, 30, "the request running")
        s.close()  # the client is gone: the worker must not go on with its 1000 steps
        took = _wait(lambda: not service.busy, 5, "the worker free again")
        health = _health(srv.base)
        assert health["gone"] == 1 and health["served"] == 0 and health["abandoned"] == 1
        assert took < 5
    service.close()


def test_a_deadline_answers_504_and_stops_the_work(tiny_model):
    from advx.engine.serve.http import create_app

    service = _endless(tiny_model)
    with _serve(create_app(service, timeout_s=1.5)) as srv:
        t0 = time.monotonic()
        status, _, body = _post(srv.base + "/harden", {"label": "cat"}, _png(_tile()))
        assert status == 504 and "not hardened within" in json.loads(body)["error"]
        assert time.monotonic() - t0 < 4
        _wait(lambda: not service.busy, 5, "the worker free again")
        assert _health(srv.base)["timed_out"] == 1
    service.close()


def _stream_until_answer(port: int, total: int, chunk: int = 64 << 10) -> tuple[int, bytes]:
    """A chunked upload of ``total`` bytes that stops as soon as the server answers; returns
    (bytes sent, the answer)."""
    import select

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /harden HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n")
    head = (b"--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n"
            b"\r\n")
    payload = b"\0" * chunk
    sent, answer = 0, b""
    try:
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break
            s.sendall(b"%x\r\n%s\r\n" % (chunk, payload))
            sent += chunk
        s.settimeout(10)
        while b"\r\n\r\n" not in answer:
            part = s.recv(65536)
            if not part:
                break
            answer += part
        answer += s.recv(65536) if b"\r\n\r\n" in answer else b""
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    return sent, answer


def test_an_upload_over_the_cap_is_refused_while_it_streams(tiny_model, tmp_path,
                                                            monkeypatch):
    import tempfile

    from advx.engine.serve.http import create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spooled uploads would go
    service = _service(tiny_model)
    with _serve(create_app(service, max_upload=1 << 20)) as srv:
        sent, answer = _stream_until_answer(srv.port, 64 << 20)
        # the server answers 413 and closes; the client's unsent data can make the kernel reset
        # the connection before the client reads the answer (Linux drops a reset socket's
        # unread data), so a reset with nothing read also counts as the refusal
        if answer:
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"upload over 1 MB" in answer
        assert sent < 16 << 20, f"{sent >> 20} MB sent before the refusal"
        # a declared length over the cap is refused before the body is read
        s = _raw(srv.port, "POST /harden HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                           f"form-data; boundary=b0undary\r\nContent-Length: {1 << 30}\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
        s.close()
        assert list(tmp_path.iterdir()) == []
        assert _health(srv.base)["status"] == "ok"
    service.close()


def test_label_sets_are_normalised_evicted_and_allow_listed(tiny_model, tmp_path, monkeypatch):
    from advx.engine.serve.http import create_app

    cache = tmp_path / "cache"
    monkeypatch.setenv("ADVX_CACHE_DIR", str(cache))
    exports = cache / "exports"
    exports.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (exports / f".export-{dead.pid}-abc").mkdir()  # left by a killed export
    (exports / f".export-{os.getpid()}-def").mkdir()  # one in progress (this process)
    service = _service(tiny_model, max_label_sets=2,
                       allowed_label_sets=[("cat", "dog"), ("cat", "bus"), ("cat", "car")])
    assert not (exports / f".export-{dead.pid}-abc").exists()
    assert (exports / f".export-{os.getpid()}-def").exists()
    assert service.label_set_builds == 1
    assert service.label_sets.resolve("cat", ["bus", "dog", "cat"]) == LABELS  # any order
    with _serve(create_app(service)) as srv:
        for ls in ("bus,dog,cat", "dog,cat", "cat,dog", "cat,bus", "bus,cat"):
            status, _, body = _post(srv.base + "/harden", {"label": "cat", "label_set": ls},
                                    _png(_tile()))
            assert status == 200, body[:300]
        assert service.label_set_builds == 3  # the default, {cat, dog}, {cat, bus}
        cached = service.cached_label_sets()
        assert len(cached) == 2 and LABELS in cached and ("bus", "cat") in cached
        kept = {p.name for p in exports.iterdir() if not p.name.startswith(".")}
        assert len(kept) == 2  # {cat, dog}'s export was deleted with it
        status, _, body = _post(srv.base + "/harden", {"label": "cat", "label_set": "cat,espresso"},
                                _png(_tile()))
        assert status == 403 and "not allowed" in json.loads(body)["error"]
        status, _, body = _post(srv.base + "/harden", {"label": "cat", "label_set": "cat,cat"},
                                _png(_tile()))
        assert status == 400 and "duplicate" in json.loads(body)["error"]
    service.close()


def test_a_token_is_required_on_every_path(tiny_model, monkeypatch):
    import hmac

    from advx.engine.serve.http import create_app

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    service = _service(tiny_model)
    with _serve(create_app(service, token="s3cret-token")) as srv:
        for path in ("/healthz", "/models", "/docs", "/openapi.json"):
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": "Basic s3cret-token"}):
                req = urllib.request.Request(srv.base + path, headers=headers)
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=10)
                assert e.value.code == 401 and e.value.headers["WWW-Authenticate"]
                assert "unauthorized" in json.loads(e.value.read())["error"]
            req = urllib.request.Request(srv.base + path,
                                         headers={"Authorization": "Bearer s3cret-token"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        status, _, _ = _post(srv.base + "/harden", {"label": "cat"}, _png(_tile()))
        assert status == 401
        health = _health(srv.base, "s3cret-token")
        assert {"status", "queued", "busy", "served", "batches"} <= set(health)
        assert health["served"] == 0 and health["queued"] == 0 and health["busy"] is False
    assert compared  # hmac.compare_digest, not ==
    service.close()


def test_every_error_body_has_the_documented_shape(tiny_model):
    from advx.engine.serve.http import create_app

    service = _service(tiny_model)
    png = _png(_tile())
    mp = "multipart/form-data; boundary=b0undary"
    with _serve(create_app(service)) as srv:
        cases = [  # (method, path, content type, body, status)
            ("GET", "/nowhere", None, b"", 404),
            ("DELETE", "/harden", None, b"", 405),
            ("POST", "/harden", "application/json", b"{}", 415),
            ("POST", "/harden", "multipart/form-data", b"x", 400),  # no boundary
            ("POST", "/harden", mp, b"--b0undary\r\nContent-Disposition: form-data; "
                                    b"name=\"label\"\r\n\r\ncat", 400),  # truncated
            ("POST", "/harden", mp, b"garbage without any boundary", 400),
            ("POST", "/harden", mp, _multipart({"label": "cat"}, None), 422),
            ("POST", "/harden", mp, _multipart({}, png), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat", "eps": "nan"}, png), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat", "steps": "x"}, png), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat"}, png).replace(
                b"name=\"image\"", b"name=\"label\""), 400),  # a field given twice
            ("POST", "/harden", mp, _multipart({"label": "cat"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
             400),
        ]
        for method, path, ctype, body, want in cases:
            req = urllib.request.Request(srv.base + path, data=body or None, method=method,
                                         headers={"Content-Type": ctype} if ctype else {})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            assert e.value.code == want, (path, body[:60], e.value.read())
            assert e.value.headers["content-type"] == "application/json"
            err = json.loads(e.value.read())
            assert list(err) == ["error"] and isinstance(err["error"], str), err
    service.close()


def test_a_large_image_is_attacked_on_a_working_copy_and_returned_at_full_size(tiny_model):
    import skimage.data as sd

    from advx.engine.serve.http import create_app

    big = np.asarray(Image.fromarray(sd.chelsea()).resize((2400, 1600)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    service = _service(tiny_model, steps=1)
    seen = []
    run = service.run_group
    service.run_group = lambda *a, **kw: seen.append(a[3][0].shape) or run(*a, **kw)
    with _serve(create_app(service, max_side=512)) as srv:
        status, headers, body = _post(srv.base + "/harden", {"label": "cat"}, buf.getvalue())
        assert status == 200, body[:300]
        out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert out.shape == (1600, 2400, 3) and seen == [(341, 512, 3)]
        record = json.loads(headers["x-advx-result"])
        assert any("attacked at 512x341" in n for n in record["notes"])
        original = np.asarray(Image.open(buf).convert("RGB")).astype(int)
        assert np.abs(out.astype(int) - original).max() <= 8
        # a header claiming too many pixels is refused before decoding
        head = io.BytesIO()
        Image.new("RGB", (9000, 9000)).save(head, "PNG")
        status, _, body = _post(srv.base + "/harden", {"label": "cat"}, head.getvalue()[:200])
        assert status == 413 and "decompression bomb" in json.loads(body)["error"]
    service.close()


def test_serve_without_its_extras_says_what_to_install(monkeypatch):
    from click.testing import CliRunner

    from advx.cli.main import cli

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    result = CliRunner().invoke(cli, ["serve", "--label-set", "cat,dog"])
    assert result.exit_code == 1
    assert "pip install 'advx[serve]'" in result.output and "Traceback" not in result.output
