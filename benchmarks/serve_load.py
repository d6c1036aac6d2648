"""Load test of ``advx serve`` against the targets of its limits: on 127.0.0.1 only, bounded in
requests and in time. It starts one server (``--tasks``: the labels task alone by default, with
its default models unless told otherwise; every scenario sends labels requests), then:

  burst      N concurrent 224 px requests with a queue bound: each answered within its deadline
             or refused in under 1 s; how long the worker stays busy after the last client;
             server RSS
  large      a 6000x4000 JPEG at steps=5: time and server RSS
  upload     a 1 GiB chunked upload: when it is refused, and bytes the server wrote to disk
             (/proc/PID/io write_bytes) and to its TMPDIR
  label-sets K distinct label sets at steps=0: the worker's time per new set, the export cache
             (bytes on disk) against its cap

    python benchmarks/serve_load.py                       # every scenario, defaults
    python benchmarks/serve_load.py --label-sets 12 --only burst,large,upload,label-sets
    python benchmarks/serve_load.py --only burst -- --surrogates effnet-lite0 --verifiers \
        effnet-lite0                                      # more `advx serve` options

Prints one line per figure and a JSON summary (``--json FILE`` writes it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # loopback only: nothing here talks to another address
POOL = ("dog", "bus", "car", "bicycle", "boat", "bird", "horse", "chair", "clock", "bottle",
        "cup", "laptop", "zebra", "sheep", "tiger", "truck")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Rss:
    """Peak resident memory of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.overall, self._stop = pid, 0, 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _tree(self) -> list[int]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_bytes()
                    ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
                    kids.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError):
                    pass
        out, todo = [self.pid], [self.pid]
        while todo:
            for c in kids.get(todo.pop(), ()):
                out.append(c)
                todo.append(c)
        return out

    def now(self) -> int:
        total = 0
        for pid in self._tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) << 10
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = self.now()
            self.peak, self.overall = max(self.peak, now), max(self.overall, now)

    def reset(self) -> None:
        self.peak = self.now()


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def multipart(fields: dict, image: bytes, filename: str = "tile.png") -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                   .encode())
    body.write(f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\""
               f"\r\n\r\n".encode() + image + f"\r\n--{b}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={b}"


def post(base: str, fields: dict, image: bytes, timeout: float) -> tuple[int, float, dict]:
    body, ctype = multipart(fields, image)
    req = urllib.request.Request(base + "/harden", data=body, headers={"Content-Type": ctype})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, time.monotonic() - t0, dict(r.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.monotonic() - t0, dict(e.headers)
    except (TimeoutError, OSError):
        return 0, time.monotonic() - t0, {}  # the client gave up


def health(base: str) -> dict:
    with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
        return json.loads(r.read())


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def tiles(n: int, size: int = 224) -> list[bytes]:
    import skimage.data as sd

    src = sd.chelsea()
    out = []
    for i in range(n):
        y, x = (7 * i) % (src.shape[0] - size), (11 * i) % (src.shape[1] - size)
        out.append(png(np.ascontiguousarray(src[y : y + size, x : x + size])))
    return out


def start_server(args, tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "ADVX_CACHE_DIR": str(tmp / "cache"), "TMPDIR": str(tmp / "tmpdir")}
    (tmp / "tmpdir").mkdir()
    env.pop("ADVX_TOKEN", None)
    cmd = [sys.executable, "-m", "advx.cli.main", "serve", "--host", HOST, "--port", str(port),
           "--tasks", args.tasks,
           "--label-set", "cat," + ",".join(POOL[:2]), "--max-queue", str(args.max_queue),
           "--timeout", str(args.timeout), "--batch-size", str(args.batch_size),
           "--max-label-sets", str(args.max_label_sets), *args.server_args]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-3000:]}")
        try:
            health(base)
            break
        except OSError:
            if time.monotonic() - t0 > 600:
                proc.kill()
                raise SystemExit("server did not come up in 600 s") from None
            time.sleep(0.5)
    print(f"server up in {time.monotonic() - t0:.1f} s: {' '.join(cmd[3:])}", flush=True)
    return proc, base, log


def wait_idle(base: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = health(base)
        if not h["busy"] and h["queued"] == 0:
            return time.monotonic() - t0
        time.sleep(0.1)
    return float("inf")


def burst(base: str, rss: Rss, args) -> dict:
    images = tiles(args.burst)
    rss.reset()
    client_timeout = args.timeout + 5  # the server's deadline answers first
    with ThreadPoolExecutor(args.burst) as pool:
        answers = list(pool.map(lambda im: post(base, {"label": "cat"}, im, client_timeout),
                                images))
    tail = wait_idle(base, 120)
    codes: dict[str, int] = {}
    for status, _, _ in answers:
        codes[str(status)] = codes.get(str(status), 0) + 1
    refused = [t for s, t, _ in answers if s in (429, 503)]
    ok = sorted(t for s, t, _ in answers if s == 200)
    timed_out = [t for s, t, _ in answers if s == 504]
    out = {
        "requests": args.burst, "max_queue": args.max_queue, "deadline_s": args.timeout,
        "codes": codes,
        "refused_max_s": round(max(refused), 3) if refused else None,
        "answered_min_s": round(ok[0], 1) if ok else None,
        "answered_p50_s": round(ok[len(ok) // 2], 1) if ok else None,
        "answered_max_s": round(ok[-1], 1) if ok else None,
        "slowest_reply_s": round(max(t for _, t, _ in answers), 1),
        "within_deadline": all(t <= args.timeout + 1.5 for s, t, _ in answers if s),
        "timed_out": len(timed_out),
        "busy_after_last_reply_s": round(tail, 2),
        "rss_peak_mb": round(rss.peak / 2**20),
        "healthz": health(base),
    }
    return out


def large(base: str, rss: Rss, args) -> dict:
    import skimage.data as sd

    rng = np.random.default_rng(0)
    photo = np.asarray(Image.fromarray(sd.chelsea()).resize((6000, 4000), Image.BICUBIC))
    photo = np.clip(photo.astype(np.int16) + rng.integers(-6, 7, photo.shape), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(photo.astype(np.uint8)).save(buf, "JPEG", quality=85)
    del photo
    data = buf.getvalue()
    wait_idle(base, 120)
    rss.reset()
    status, seconds, headers = post(base, {"label": "cat", "steps": "5"}, data, args.timeout + 5)
    record = json.loads(headers.get("x-advx-result", "{}") or "{}")
    return {"jpeg_mb": round(len(data) / 2**20, 2), "status": status,
            "seconds": round(seconds, 1), "rss_peak_mb": round(rss.peak / 2**20),
            "notes": record.get("notes"), "ssim": record.get("ssim"),
            "linf": record.get("linf")}


def upload(base: str, pid: int, tmpdir: Path, total: int = 1 << 30) -> dict:
    port = int(base.rsplit(":", 1)[1])
    before = write_bytes(pid)
    s = socket.create_connection((HOST, port), timeout=30)
    boundary = "loadtest"
    s.sendall(b"POST /harden HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n\r\n")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.bin\"\r\n\r\n").encode()
    chunk = os.urandom(1 << 20)
    sent, answer, t0, error = 0, b"", time.monotonic(), None
    try:
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError as e:  # the server closed while a chunk was on its way: read its answer
        error = type(e).__name__
    took = time.monotonic() - t0
    try:
        s.settimeout(10)
        while b"\r\n\r\n" not in answer:
            part = s.recv(65536)
            if not part:
                break
            answer += part
    except OSError as e:
        error = error or type(e).__name__
    finally:
        s.close()
    if not answer:
        answer = f"<no answer read: {error}>".encode()
    time.sleep(1)
    written = write_bytes(pid) - before
    spooled = sum(f.stat().st_size for f in tmpdir.rglob("*") if f.is_file())
    return {"offered_mb": total >> 20, "sent_mb_before_answer": round(sent / 2**20, 1),
            "answer": answer.split(b"\r\n", 1)[0].decode("latin-1"),
            "seconds_to_refusal": round(took, 2), "send_error": error,
            "server_disk_writes_mb": round(written / 2**20, 2),
            "tmpdir_bytes": spooled}


def label_sets(base: str, cache: Path, args) -> dict:
    from itertools import combinations

    sets = [("cat", a, b) for a, b in combinations(POOL, 2)][: args.label_sets]
    image = tiles(1)[0]
    wait_idle(base, 120)
    t_base = [post(base, {"label": "cat", "steps": "0"}, image, 300)[1] for _ in range(3)]
    base_s = sorted(t_base)[1]
    times, peak_bytes, peak_sets, t0 = [], 0, 0, time.monotonic()
    for ls in sets:
        if time.monotonic() - t0 > args.label_set_seconds:
            break
        status, seconds, _ = post(base, {"label": "cat", "label_set": ",".join(ls),
                                         "steps": "0"}, image, 300)
        times.append((status, seconds))
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        peak_bytes = max(peak_bytes, size)
        peak_sets = max(peak_sets, health(base)["label_sets_cached"])
    per_set = sorted(t - base_s for s, t in times if s == 200)
    exports = [p for p in (cache / "exports").iterdir() if not p.name.startswith(".")] \
        if (cache / "exports").is_dir() else []
    return {"label_sets_sent": len(times), "ok": sum(s == 200 for s, _ in times),
            "request_seconds_cached_set": round(base_s, 2),
            "worker_seconds_per_new_set_p50": round(per_set[len(per_set) // 2], 2)
            if per_set else None,
            "worker_seconds_per_new_set_max": round(per_set[-1], 2) if per_set else None,
            "max_label_sets": args.max_label_sets, "label_sets_cached_peak": peak_sets,
            "export_dirs_at_end": len(exports),
            "cache_mb_peak": round(peak_bytes / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="burst,large,upload,label-sets")
    ap.add_argument("--tasks", default="labels",
                    help="the tasks the server serves (`advx serve --tasks`); the scenarios "
                         "send labels requests, so it must include labels")
    ap.add_argument("--burst", type=int, default=40, help="concurrent 224 px requests")
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=90.0, help="the server's deadline (s)")
    ap.add_argument("--label-sets", type=int, default=100)
    ap.add_argument("--label-set-seconds", type=float, default=900.0,
                    help="stop sending new label sets after this long")
    ap.add_argument("--max-label-sets", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("server_args", nargs="*", help="more `advx serve` options, after --")
    args = ap.parse_args()
    if "labels" not in args.tasks.split(","):
        ap.error("--tasks must include labels: every scenario sends labels requests")
    only = set(args.only.split(","))
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="advx-serve-load-") as tmp_:
        tmp = Path(tmp_)
        proc, base, _log = start_server(args, tmp)
        rss = Rss(proc.pid)
        try:
            for name, run in (("burst", lambda: burst(base, rss, args)),
                              ("large", lambda: large(base, rss, args)),
                              ("upload", lambda: upload(base, proc.pid, tmp / "tmpdir")),
                              ("label-sets", lambda: label_sets(base, tmp / "cache", args))):
                if name in only:
                    t0 = time.monotonic()
                    summary[name] = run()
                    summary[name]["scenario_seconds"] = round(time.monotonic() - t0, 1)
                    print(f"{name}: {json.dumps(summary[name])}", flush=True)
            summary["rss_peak_mb_overall"] = round(rss.overall / 2**20)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
