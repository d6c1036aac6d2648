"""Folder runs on Ray: a local cluster started here (2 CPUs, 2 workers), real weights.

The records must equal a single-process run's (same seed, same thread count: floating-point
results depend on how many threads a convolution uses), and a worker killed mid-run must lose
nothing and duplicate nothing (Ray re-runs its batch, or ``resume`` finishes the run)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiles

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

LABELS = ("cat", "espresso", "motorcycle")
SURROGATES = ("effnet-lite0",)


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="advx-test",
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-in")
    for name in ("chelsea", "coffee", "stereo_motorcycle"):
        image, label = photos[name]
        (root / label).mkdir()
        for i, tile in enumerate(tiles(image, n=2, size=160)):
            Image.fromarray(tile).save(root / label / f"{i}.png")
    return root


def worker_pids() -> dict[str, int]:
    """The process ids of the cluster's advx hardener actors."""
    from advx.engine.folder.distributed import ACTOR_PREFIX

    found = [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(ACTOR_PREFIX)]
    return {n: ray.get(ray.get_actor(n, namespace=ns).ready.remote()) for n, ns in found}


def _config(steps: int = 2):
    from advx.engine.config import HardenConfig

    return HardenConfig(steps=steps, batch_size=1, transforms="jpeg", eps_rungs=1, seed=3)


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    paths = Counter(json.loads(line)["path"] for line in lines)
    assert all(n == 1 for n in paths.values()), paths  # nothing duplicated
    recs = {}
    for line in lines:
        r = json.loads(line)
        r.pop("seconds")  # wall time
        recs[r["path"]] = r
    return recs


def _harden(inp: Path, out: Path, ray_opts=None, **kw):
    import advx

    return advx.harden_folder(inp, out, label_set=LABELS, surrogates=SURROGATES,
                              config=kw.pop("config", _config()), ray=ray_opts, **kw)


def test_ray_records_equal_a_single_process_run(cluster, folder, tmp_path):
    import advx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each 1-CPU worker uses
    try:
        one = _harden(folder, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    out = _harden(folder, tmp_path / "ray", advx.RayOptions("auto", workers=2))
    assert out.summary["ray_workers"] == 2 and out.summary["complete"]
    a, b = _records(tmp_path / "one"), _records(tmp_path / "ray")
    assert len(a) == 6 and a == b
    for r in a.values():  # the very same delivered bytes
        assert (tmp_path / "one" / r["output"]).read_bytes() == (
            tmp_path / "ray" / r["output"]).read_bytes()
    assert one.summary["fooled"] == out.summary["fooled"]


def _kill_a_worker_when_up(killed: list[int], out: Path) -> threading.Thread:
    """Kills the first worker once both are up and the run is about to harden: its
    results.jsonl is written after the workers' check, as the first batch goes out (the pids
    are read before: an actor answers them only between its batches)."""
    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = worker_pids()
            if len(pids) == 2:
                while not (out / "results.jsonl").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                pid = pids[sorted(pids)[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_killed_worker_is_restarted_and_its_batch_rerun(cluster, folder, tmp_path):
    import advx

    killed: list[int] = []
    t = _kill_a_worker_when_up(killed, tmp_path / "out")
    out = _harden(folder, tmp_path / "out", advx.RayOptions("auto", workers=2),
                  config=_config(steps=3))
    t.join()
    assert killed, "no worker was killed"
    assert out.summary["complete"] and out.summary["done"] == 6
    recs = _records(tmp_path / "out")
    assert len(recs) == 6
    for r in recs.values():
        assert np.asarray(Image.open(tmp_path / "out" / r["output"])).shape == (160, 160, 3)


def test_killed_worker_without_restarts_then_resume(cluster, folder, tmp_path):
    import advx
    from advx.engine.errors import RunError

    killed: list[int] = []
    t = _kill_a_worker_when_up(killed, tmp_path / "out")
    opts = advx.RayOptions("auto", workers=2, max_retries=0)
    with pytest.raises(RunError, match="--resume"):
        _harden(folder, tmp_path / "out", opts, config=_config(steps=3))
    t.join()
    assert killed
    before = _records(tmp_path / "out")
    assert len(before) < 6
    done = _harden(folder, tmp_path / "out", opts, config=_config(steps=3), resume=True)
    assert done.summary["complete"]
    after = _records(tmp_path / "out")
    assert len(after) == 6
    assert all(after[p] == r for p, r in before.items())  # kept as they were


def test_a_worker_dead_before_the_first_batch_is_a_run_error():
    """A worker lost during the check before the first batch (its restarts spent): the same
    RunError naming --resume as a worker lost while hardening, not Ray's own exception."""
    from advx.engine.errors import RunError
    from advx.engine.folder.distributed import RayPool

    class DeadRay:
        exceptions = ray.exceptions

        def get(self, ref):
            raise ray.exceptions.ActorDiedError()

    class Actor:
        class check:  # as a Ray actor handle spells its methods
            @staticmethod
            def remote(*args):
                return None

    pool = object.__new__(RayPool)
    pool.ray, pool.actors = DeadRay(), [Actor()]
    with pytest.raises(RunError, match=r"restarts are spent.*run again with --resume"):
        pool.check(["cat"], None)


def _no_workers_left(timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while worker_pids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_model_error_found_by_the_workers_check_ends_them(cluster, tmp_path):
    """The workers check the run's labels against their models (a solver without a label for
    one): that error is raised as in one process, nothing is written, no worker is left."""
    import advx
    from advx.export.zoo import LabelMapError

    from tiny import save_tiny_solver

    name = f"onnx:{save_tiny_solver(tmp_path / 'solver', 'grid')}"
    rng = np.random.default_rng(0)
    for label in ("Bus", "stairs"):
        (tmp_path / "in" / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "in" / label / "0.png")
    with pytest.raises(LabelMapError, match="has no label for 'stairs'"):
        advx.harden_folder(tmp_path / "in", tmp_path / "out", surrogates=[name],
                           verifiers=[name], config=_config(),
                           ray=advx.RayOptions("auto", workers=2))
    assert not (tmp_path / "out").exists()  # nothing written
    assert _no_workers_left()


def test_worker_plan_follows_the_cluster():
    from advx.engine.folder.distributed import RayOptions, plan

    assert plan({"CPU": 2.0}, RayOptions()) == (1, 2.0, 0.0)  # one per 4 cores, at least one
    assert plan({"CPU": 16.0}, RayOptions()) == (4, 4.0, 0.0)
    assert plan({"CPU": 2.0}, RayOptions(workers=2)) == (2, 1.0, 0.0)
    assert plan({"CPU": 32.0, "GPU": 4.0}, RayOptions()) == (4, 8.0, 1.0)  # one per GPU
    assert plan({"CPU": 8.0, "GPU": 1.0}, RayOptions(workers=2)) == (2, 4.0, 0.5)
    with pytest.raises(ValueError, match="workers"):
        RayOptions(workers=0)


def test_a_model_error_in_the_workers_is_the_error_raised(cluster, folder, tmp_path):
    import advx
    from advx.export.zoo import ModelNameError

    with pytest.raises(ModelNameError, match="effnet-lite9"):
        advx.harden_folder(folder, tmp_path / "out", label_set=LABELS,
                           surrogates=["effnet-lite9"], ray=advx.RayOptions("auto", workers=2))
    assert not (tmp_path / "out").exists()  # nothing written


def test_api_harden_on_ray_equals_its_runs_in_one_process(cluster, folder):
    import advx
    from advx.engine.api import Hardener

    paths = sorted(folder.rglob("*.png"))
    images = [np.asarray(Image.open(p)) for p in paths]
    labels = [p.parent.name for p in paths]
    cfg = _config()
    got = advx.harden(images, labels, label_set=LABELS, surrogates=SURROGATES, config=cfg,
                      ray=advx.RayOptions("auto", workers=2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h = Hardener(surrogates=SURROGATES, config=cfg, label_set=LABELS)
        chunk = 2 * cfg.batch_size
        want = [r for i in range(0, len(images), chunk)
                for r in h.run(images[i : i + chunk], labels[i : i + chunk])]
    finally:
        torch.set_num_threads(threads)
    assert [r.label for r in got] == labels  # in input order
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.image, b.image)
        assert (a.status, a.steps, a.predictions_after, a.right_before, a.right_after) == (
            b.status, b.steps, b.predictions_after, b.right_before, b.right_after)


def test_a_text_folder_run_on_ray_equals_one_process(cluster, tmp_path):
    """Text captchas go over Ray workers too: the same records and delivered bytes as one
    process with the same seed."""
    import advx
    from advx.engine.config import HardenConfig
    from advx.engine.tasks.text.draw import write_captcha_folder

    pytest.importorskip("captcha_whisperer")
    inp = tmp_path / "in"
    write_captcha_folder(inp, 3, seed=5)
    config = HardenConfig(steps=3, verify_every=3, batch_size=1, seed=3)

    def run(out, ray_opts=None):
        return advx.harden_folder(inp, out, task="text", surrogates=["captcha-whisperer"],
                                  verifiers=["captcha-whisperer"], config=config, ray=ray_opts)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run(tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    out = run(tmp_path / "ray", advx.RayOptions("auto", workers=2))
    assert out.summary["task"] == "text" and out.summary["ray_workers"] == 2
    assert out.summary["complete"] and out.summary["errors"] == 0
    a, b = _records(tmp_path / "one"), _records(tmp_path / "ray")
    assert len(a) == 3 and a == b
    for r in a.values():
        assert r["task"] == "text" and r["text"]
        assert (tmp_path / "one" / r["output"]).read_bytes() == (
            tmp_path / "ray" / r["output"]).read_bytes()
    assert one.summary["headline"] == out.summary["headline"]


# --------------------------------------------------------------------------- local instances

_DRIVER = r"""
import json, os, sys, time
from advx.engine.folder.distributed import RayOptions, connect
connect(RayOptions("local"))
import psutil  # Ray's own copy
me = psutil.Process()
pids = [p.pid for p in me.children(recursive=True)]
listen = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == "LISTEN" and c.pid in set(pids) | {me.pid}})
print(json.dumps({"pids": pids, "listen": listen}), flush=True)
time.sleep(600)
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out


def _descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_bytes()
                kids.setdefault(int(stat[stat.rindex(b")") + 2 :].split()[1]), []).append(int(d))
            except (OSError, ValueError):
                pass
    found, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), ()):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux /proc")
def test_local_ray_listens_on_loopback_and_ends_with_its_driver():
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.kill()  # kill -9: no shutdown runs in the driver
        proc.wait()
    assert info["pids"] and set(info["listen"]) <= LOOPBACK, info["listen"]
    t0 = time.monotonic()
    while _alive(info["pids"]):
        assert time.monotonic() - t0 < 15, f"Ray processes {_alive(info['pids'])} outlive it"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import tiny

    d = tmp_path_factory.mktemp("tiny-ray-serve")
    return f"timm:test_efficientnet/{tiny.save_tiny_timm_checkpoint(d)}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, fields: dict, png: bytes, token: str | None = "tok", timeout: float = 120):
    import io
    import urllib.error
    import urllib.request
    import uuid

    b = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                   .encode())
    body.write(f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"t.png\""
               f"\r\n\r\n".encode() + png + f"\r\n--{b}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body.getvalue(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux /proc")
def test_serve_on_ray_serve_answers_the_same_api(tiny_model, photos, tmp_path):
    """`advx serve --ray local`: Ray Serve replicas behind the same app (token, error bodies,
    429 from Ray Serve's queue limit), and nothing of Ray left once it is stopped."""
    import io
    import subprocess
    import sys
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("ray.serve")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ADVX_TOKEN": "tok",
           "ADVX_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "advx.cli.main", "serve", "--ray", "local", "--port", str(port),
           "--label-set", "cat,dog,bus", "--surrogates", tiny_model, "--verifiers", tiny_model,
           "--transforms", "none", "--steps", "2", "--batch-size", "2", "--max-queue", "1"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while "listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        tile = np.ascontiguousarray(photos["chelsea"][0][40:136, 100:196])
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, "PNG")
        png = buf.getvalue()
        status, headers, body = _post(base + "/harden", {"label": "cat"}, png)
        assert status == 200, body[:300]
        out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert out.shape == tile.shape and np.abs(out.astype(int) - tile.astype(int)).max() <= 8
        assert json.loads(headers["x-advx-result"])["label"] == "cat"
        status, _, body = _post(base + "/harden", {"label": "cat"}, png, token=None)
        assert status == 401 and "error" in json.loads(body)
        status, _, body = _post(base + "/harden", {"label": "zebra"}, png)
        assert status == 400 and "not in the label set" in json.loads(body)["error"]
        # 2 running + 1 queued at most: the rest are refused by Ray Serve's queue limit
        slow = {"label": "cat", "eps": "0.5", "steps": "1000"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _post(base + "/harden", slow, png), range(8)))
        codes = sorted(a[0] for a in answers)
        assert 429 in codes and set(codes) <= {200, 429}, codes
        refused = next(a for a in answers if a[0] == 429)
        assert int(refused[1]["retry-after"]) >= 1 and "error" in json.loads(refused[2])
        req = urllib.request.Request(base + "/healthz", headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(req, timeout=10) as r:
            health = json.loads(r.read())
        assert health["backend"] == "ray-serve" and {"queued", "busy", "served"} <= set(health)
        assert health["served"] == codes.count(200) + 1
    finally:
        ray_pids = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    t0 = time.monotonic()
    while _alive(ray_pids):
        assert time.monotonic() - t0 < 20, f"{_alive(ray_pids)} outlive advx serve"
        time.sleep(0.2)
