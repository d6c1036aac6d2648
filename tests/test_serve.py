"""``advx serve`` as a real server process, driven by a real HTTP client: a hardened tile, every
kind of bad request of each task (4xx JSON, the server stays up), and concurrent requests
batched together. Then each limit of the service, on a tiny model in this process (each test
fails without its limit): the bounded queue (429), a request given up stops its slot, a
deadline (504, for each task), the streamed upload cap, the cache of label sets, the bearer
token, the error bodies, large images, /healthz."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from web import Running, free_port, get, png, post

SOLVER = "captcha-whisperer"  # the text task's OCR solver
HAS_SOLVER = importlib.util.find_spec("captcha_whisperer") is not None
TASKS = ("labels", "text")
MAX_SIDE = 512  # the server's --max-side
LABELS = ("cat", "dog", "bus")  # the label set of the tiny model's services


def tile(i: int = 0) -> np.ndarray:
    import skimage.data as sd

    src = sd.chelsea()
    return np.ascontiguousarray(src[40 + 7 * i : 40 + 7 * i + 96, 100 : 196])


def captchas(n: int = 1) -> list[tuple[str, np.ndarray]]:
    """(text, pixels) of ``n`` drawn captchas (60x160 px)."""
    from advx.engine.tasks.text.draw import draw_captchas

    return draw_captchas(n, seed=3)


def sample(task: str, i: int = 0) -> tuple[str, object, np.ndarray]:
    """(truth field, truth, pixels) of an item of ``task`` (text: skipped without its solver)."""
    if task == "labels":
        return "label", LABELS[i % len(LABELS)], tile(i)
    pytest.importorskip("captcha_whisperer")
    text, pixels = captchas(i + 1)[i]
    return "text", text, pixels


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`advx serve` with a real labels model and, where it is installed, a real OCR solver
    (the text task's models load at start: no option of its own is needed)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "ADVX_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    tasks = ["--tasks", "labels,text", "--surrogates", f"text={SOLVER}",
             "--verifiers", f"text={SOLVER}"] if HAS_SOLVER else ["--tasks", "labels"]
    cmd = [sys.executable, "-m", "advx.cli.main", "serve", "--port", str(port), *tasks,
           "--label-set", "cat,espresso,bus", "--surrogates", "effnet-lite0", "--verifiers",
           "effnet-lite0", "--transforms", "none", "--steps", "3", "--eps", "8",
           "--max-pixels", "4000000", "--max-upload-mb", "2", "--batch-size", "8",
           "--max-side", str(MAX_SIDE)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()}")
        try:
            if get(base + "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"server did not come up: {log.read_text()}")
    yield base, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_hardens_a_tile(server):
    base, _ = server
    pixels = tile()
    status, headers, body = post(base + "/harden", {"label": "cat"}, png(pixels))
    assert status == 200 and headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= 8
    record = json.loads(headers["x-advx-result"])
    assert record["task"] == "labels"
    assert record["label"] == "cat" and record["status"] in ("fooled", "unfooled")
    assert record["linf"] <= 8 + 1e-6 and "effnet-lite0" in record["margins"]
    models = get(base + "/models")[1]
    labels = models["tasks"]["labels"]
    assert labels["options"]["label_set"] == ["cat", "espresso", "bus"]
    assert labels["transforms"] == "none" and labels["loaded"]["verifiers"] == ["effnet-lite0"]
    assert "effnet-lite0" in models["registry"]


@pytest.mark.parametrize("task", TASKS)
def test_bad_requests_get_4xx_json_and_the_server_stays_up(server, task):
    base, proc = server
    field, truth, pixels = sample(task)
    image = png(pixels)
    bomb = io.BytesIO()
    Image.new("RGB", (5000, 5000), (10, 20, 30)).save(bomb, "PNG")  # 25 Mpx, a few kB
    cases = [  # (fields, image, status, what the error says)
        ({field: truth}, b"", 400, "empty"),
        ({field: truth}, b"this is not an image\n" * 10, 400, "not a usable image"),
        ({}, image, 422, "give one of label"),
        ({"task": task}, image, 422, f"missing field: {field} (a {task} request)"),
        ({field: truth, "task": "nope"}, image, 422, "'nope' is not served here"),
        ({field: truth, "eps": "100"}, image, 422, "eps must be in"),
        ({field: truth}, os.urandom(3 << 20), 413, "upload over"),
        ({field: truth}, bomb.getvalue(), 413, "decompression bomb"),
        ({field: truth}, None, 422, "image"),
    ]
    if task == "labels":
        cases += [({"label": "zebra"}, image, 400, "not in the label set")]
        if HAS_SOLVER:
            cases += [({"task": "labels", "label": "cat", "text": "7KX2P"}, image, 422,
                       "text: not a field of a labels request")]
    else:
        wide = png(np.concatenate([p for _, p in captchas(4)], axis=1))  # 640 px: over 512
        cases += [
            ({"text": "AB~"}, image, 422, f"text: {SOLVER} cannot read '~'"),
            ({"text": ""}, image, 422, "empty"),
            ({"text": f" {truth}"}, image, 422, "leading or trailing spaces"),
            ({"text": truth, "label": "cat"}, image, 422, "not several"),
            ({"text": truth, "label_set": "cat,dog"}, image, 422,
             "label_set: not a field of a text request"),
            ({"text": truth}, wide, 413, f"over the longest side of {MAX_SIDE} px"),
        ]
    for fields, data, want, says in cases:
        status, headers, body = post(base + "/harden", fields, data)
        assert status == want, (fields, body[:200])
        assert headers["content-type"] == "application/json"
        err = json.loads(body)
        assert list(err) == ["error"] and says in err["error"], (fields, err)
    assert proc.poll() is None and get(base + "/healthz")[0] == 200


def test_concurrent_requests_are_batched_and_all_answered(server):
    base, _ = server
    before = get(base + "/healthz")[1]
    tiles = [tile(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda t: post(base + "/harden", {"label": "cat"}, png(t)), tiles))
    for pixels, (status, _headers, body) in zip(tiles, answers, strict=True):
        assert status == 200
        out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert out.shape == pixels.shape
        assert np.abs(out.astype(int) - pixels.astype(int)).max() <= 8
    deadline = time.time() + 10  # a reply is counted once it is sent
    while (after := get(base + "/healthz")[1])["served"] < before["served"] + 8:
        assert time.time() < deadline
        time.sleep(0.1)
    assert after["served"] == before["served"] + 8
    assert after["batches"] - before["batches"] < 8, "concurrent requests share scheduler runs"


# --------------------------------------------------------------------------- limits, tiny model

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import tiny

    d = tmp_path_factory.mktemp("tiny-serve")
    return f"timm:test_efficientnet/{tiny.save_tiny_timm_checkpoint(d)}"


def _service(tiny_model: str, tasks=("labels",), allowed=None, **kw):
    """A service of the tiny model over LABELS (its models built at start, as `advx serve
    --label-set` does) and, with ``text`` in ``tasks``, of the OCR solver (loaded on its first
    request)."""
    from advx.engine.config import HardenConfig
    from advx.engine.serve.requests import TaskSetup
    from advx.engine.serve.service import HardenService

    cfg = kw.pop("config", None) or HardenConfig(steps=kw.pop("steps", 2), batch_size=4,
                                                 eps_rungs=1)
    setups = {"labels": TaskSetup([tiny_model], [tiny_model], transforms="none",
                                  options={"label_set": LABELS}, allowed=allowed, eager=True)}
    if "text" in tasks:
        pytest.importorskip("captcha_whisperer")
        setups["text"] = TaskSetup([SOLVER], [SOLVER])
    return HardenService(setups, config=cfg, max_batch=4, **kw)


def _endless(tiny_model: str, **kw):
    """A service whose images are never fooled (the margin asked is out of reach): each request
    runs to its 1000 steps unless it is stopped."""
    from advx.engine.config import HardenConfig

    cfg = HardenConfig(steps=1000, batch_size=4, eps_rungs=1, required_margin=1e9)
    return _service(tiny_model, config=cfg, **kw)


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
    with Running(create_app(service)) as srv, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(post, srv.base + "/harden", {"label": "cat"}, png(tile(i)))
                   for i in range(2)]
        _wait(lambda: service.pending() == 2, 30, "two requests queued")
        t0 = time.monotonic()
        status, headers, body = post(srv.base + "/harden", {"label": "cat"}, png(tile(3)))
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
    h = service.hardener("labels", eps=8.0, steps=40)
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
        results = h.run([tile(0), tile(1)], ["cat", "dog"],
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
    with Running(create_app(service)) as srv:
        body = _multipart({"label": "cat"}, png(tile()))
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


@pytest.fixture(scope="module")
def endless(tiny_model):
    """A service of both tasks whose items are never fooled (each runs to its 1000 steps unless
    stopped), the models of each built before its request."""
    service = _endless(tiny_model, tasks=TASKS)
    for task in TASKS:
        service.hardener(task)
    yield service
    service.close()


@pytest.mark.parametrize("task", TASKS)
def test_a_deadline_answers_504_and_stops_the_work(endless, task):
    """Each attack step is slowed so that the deadline falls before the run could end (a text
    run that gains nothing would leave after two verification passes, 10 steps)."""
    from advx.engine.serve.http import Limits, create_app

    if task == "text" and not HAS_SOLVER:
        pytest.skip("no captcha_whisperer")
    field, truth, pixels = sample(task)
    attack, calls = endless.hardener(task).scheduler.attack, []
    step = attack.step

    def slow(state, *a, **kw):
        calls.append(time.monotonic())
        time.sleep(0.4)
        return step(state, *a, **kw)

    attack.step = slow
    try:
        with Running(create_app(endless, limits=Limits(timeout_s=1.5))) as srv:
            t0 = time.monotonic()
            status, _, body = post(srv.base + "/harden", {field: truth}, png(pixels))
            t504 = time.monotonic()
            assert status == 504 and "not hardened within" in json.loads(body)["error"]
            assert t504 - t0 < 4
            _wait(lambda: not endless.busy, 3, "the worker free again")
            assert _health(srv.base)["timed_out"] == 1
    finally:
        attack.step = step
    assert 0 < len(calls) < 10 and all(t < t504 + 0.5 for t in calls)


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

    from advx.engine.serve.http import Limits, create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spooled uploads would go
    service = _service(tiny_model)
    with Running(create_app(service, limits=Limits(max_upload=1 << 20))) as srv:
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


def _label_sets(service) -> list[tuple[str, ...]]:
    """The label sets whose models the service keeps, least recently used first."""
    return [dict(options)["label_set"] for options in service.hardeners.sets("labels")]


def test_label_sets_are_normalised_evicted_and_allow_listed(tiny_model, tmp_path, monkeypatch):
    from advx.engine.errors import NotAllowed
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
                       allowed=[("cat", "dog"), ("cat", "bus"), ("cat", "car")])
    assert not (exports / f".export-{dead.pid}-abc").exists()
    assert (exports / f".export-{os.getpid()}-def").exists()
    assert service.label_set_builds == 1 and _label_sets(service) == [LABELS]
    group = service.requests.group("labels", "cat", label_set=["bus", "dog", "cat"])
    assert dict(group.options)["label_set"] == LABELS  # any order: the default set's models
    with pytest.raises(NotAllowed, match="not allowed"):
        service.requests.group("labels", "cat", label_set="cat,espresso")
    with Running(create_app(service)) as srv:
        for ls in ("bus,dog,cat", "dog,cat", "cat,dog", "cat,bus", "bus,cat"):
            status, _, body = post(srv.base + "/harden", {"label": "cat", "label_set": ls},
                                   png(tile()))
            assert status == 200, body[:300]
        assert service.label_set_builds == 3  # the default, {cat, dog}, {cat, bus}
        cached = _label_sets(service)
        assert len(cached) == 2 and LABELS in cached and ("bus", "cat") in cached
        kept = {p.name for p in exports.iterdir() if not p.name.startswith(".")}
        assert len(kept) == 2  # {cat, dog}'s export was deleted with it
        status, _, body = post(srv.base + "/harden", {"label": "cat", "label_set": "cat,espresso"},
                               png(tile()))
        assert status == 403 and "not allowed" in json.loads(body)["error"]
        status, _, body = post(srv.base + "/harden", {"label": "cat", "label_set": "cat,cat"},
                               png(tile()))
        assert status == 400 and "duplicate" in json.loads(body)["error"]
        assert _health(srv.base)["label_set_builds"] == 3
    service.close()


def test_a_token_is_required_on_every_path(tiny_model, monkeypatch):
    import hmac

    from advx.engine.serve.http import create_app

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    service = _service(tiny_model)
    with Running(create_app(service, token="s3cret-token")) as srv:
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
        status, _, _ = post(srv.base + "/harden", {"label": "cat"}, png(tile()))
        assert status == 401
        health = _health(srv.base, "s3cret-token")
        assert {"status", "queued", "busy", "served", "batches"} <= set(health)
        assert health["served"] == 0 and health["queued"] == 0 and health["busy"] is False
    assert compared  # hmac.compare_digest, not ==
    service.close()


def test_every_error_body_has_the_documented_shape(tiny_model):
    from advx.engine.serve.http import create_app

    service = _service(tiny_model)
    image = png(tile())
    mp = "multipart/form-data; boundary=b0undary"
    with Running(create_app(service)) as srv:
        cases = [  # (method, path, content type, body, status)
            ("GET", "/nowhere", None, b"", 404),
            ("DELETE", "/harden", None, b"", 405),
            ("POST", "/harden", "application/json", b"{}", 415),
            ("POST", "/harden", "multipart/form-data", b"x", 400),  # no boundary
            ("POST", "/harden", mp, b"--b0undary\r\nContent-Disposition: form-data; "
                                    b"name=\"label\"\r\n\r\ncat", 400),  # truncated
            ("POST", "/harden", mp, b"garbage without any boundary", 400),
            ("POST", "/harden", mp, _multipart({"label": "cat"}, None), 422),
            ("POST", "/harden", mp, _multipart({}, image), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat", "eps": "nan"}, image), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat", "steps": "x"}, image), 422),
            ("POST", "/harden", mp, _multipart({"label": "cat"}, image).replace(
                b"name=\"image\"", b"name=\"label\""), 400),  # a field given twice
            ("POST", "/harden", mp, _multipart({"label": "cat"},
                                               b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 400),
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

    from advx.engine.serve.http import Limits, create_app

    big = np.asarray(Image.fromarray(sd.chelsea()).resize((2400, 1600)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    service = _service(tiny_model, steps=1)
    seen = []
    run = service.run_group
    service.run_group = lambda group, images, *a, **kw: (seen.append(images[0].shape)
                                                         or run(group, images, *a, **kw))
    with Running(create_app(service, limits=Limits(max_side=512))) as srv:
        status, headers, body = post(srv.base + "/harden", {"label": "cat"}, buf.getvalue())
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
        status, _, body = post(srv.base + "/harden", {"label": "cat"}, head.getvalue()[:200])
        assert status == 413 and "decompression bomb" in json.loads(body)["error"]
    service.close()


def test_serve_without_its_extras_says_what_to_install(monkeypatch):
    from click.testing import CliRunner

    from advx.cli.main import cli

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    result = CliRunner().invoke(cli, ["serve", "--label-set", "cat,dog"])
    assert result.exit_code == 1
    assert "pip install 'advx[serve]'" in result.output and "Traceback" not in result.output
