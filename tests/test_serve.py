"""``advx serve`` as a real server process, driven by a real HTTP client: a hardened tile, every
kind of bad request (4xx JSON, the server stays up), and concurrent requests batched together."""

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
    after = _get(base + "/healthz")[1]
    assert after["served"] == before["served"] + 8
    assert after["batches"] - before["batches"] < 8, "concurrent requests share scheduler runs"
