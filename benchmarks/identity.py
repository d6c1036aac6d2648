"""Behaviour unchanged, shown: seeded runs whose delivered files and per-item readings must not
move when code is restructured.

``record`` runs each case through the command line and the HTTP service (interfaces that
outlive a refactor) and writes, per case and item, the sha256 of the delivered file and the
readings and verdicts of its record; ``compare`` checks two such files item by item.

Cases (all on the CPU, seeded, ``OMP_NUM_THREADS=2``):

- ``image-defaults``: 12 tiles cut from the offline sample photos, the default models;
- ``image-whitebox-spec``: the same tiles against a real solver spec (effnet-lite0 exported to
  ONNX, described by a solver spec) as surrogate and verifier, eps 4;
- ``text-defaults``: 8 drawn captchas against every built-in OCR solver;
- ``image-resume`` / ``text-resume``: the default runs with their last records and files
  removed (what a kill leaves), then ``--resume``;
- ``serve-image`` / ``serve-text``: one request of each kind to ``advx serve``.

    python benchmarks/identity.py record --json benchmarks/results/identity/before.json
    python benchmarks/identity.py compare benchmarks/results/identity/before.json after.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ADVX = [sys.executable, "-m", "advx.cli.main"]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}
# PP-OCRv4 (one of the default OCR solvers): the wheel the tests download, unless named already
_WHEEL = Path.home() / ".cache/advx/wheels/rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
if "ADVX_PPOCR_REC" not in ENV and _WHEEL.is_file():
    ENV["ADVX_PPOCR_REC"] = str(_WHEEL)
CROPS = ((0.5, 0.5, 1.0), (0.4, 0.5, 0.7))
# fields of a record that are timings or where-it-ran, not behaviour
VOLATILE = {"seconds", "output"}


def _photos() -> list[tuple[str, str, np.ndarray]]:
    import skimage.data
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = np.asarray(Image.open(fh).convert("RGB"))
    return [("chelsea", "cat", skimage.data.chelsea()),
            ("coffee", "espresso", skimage.data.coffee()),
            ("motorcycle", "motorcycle", skimage.data.stereo_motorcycle()[0]),
            ("rocket", "missile", skimage.data.rocket()),
            ("china", "palace", load_sample_image("china.jpg")),
            ("hopper", "military uniform", hopper)]


def write_tiles(out: Path) -> None:
    from PIL import Image

    for name, label, px in _photos():
        h, w = px.shape[:2]
        for i, (cx, cy, frac) in enumerate(CROPS):
            side = int(min(h, w) * frac)
            x0 = int(min(max(cx * w - side / 2, 0), w - side))
            y0 = int(min(max(cy * h - side / 2, 0), h - side))
            tile = Image.fromarray(np.ascontiguousarray(px[y0:y0 + side, x0:x0 + side]))
            folder = out / label.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            tile.resize((224, 224), Image.Resampling.BICUBIC).save(folder / f"{name}_{i}.png")


def write_captchas(out: Path) -> Path:
    try:
        from advx.engine.tasks.text.draw import write_captcha_folder
    except ImportError:  # the layout before the task seam
        from advx.engine.text_draw import write_captcha_folder  # type: ignore[no-redef]
    return write_captcha_folder(out, 8, seed=0)


def write_solver_spec(work: Path, labels: list[str]) -> Path:
    folder = work / "lite0"
    if not (folder / "model.onnx").exists():
        run([*ADVX, "export", "effnet-lite0", "--labels", ",".join(labels), "--out", str(folder)])
    m = json.loads((folder / "manifest.json").read_text())
    spec = {"model": "model.onnx",
            "input": {"name": m["input_name"], "size": [m["input_size"]] * 2,
                      "range": [0, 1], "mean": [0, 0, 0], "std": [1, 1, 1], "channels": "RGB",
                      "resize": m["interpolation"], "antialias": True, "crop": m["crop_pct"]},
            "output": {"name": m["output_name"], "kind": "logits"},
            "labels": list(m["labels"])}
    path = folder / "solver.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=ENV, cwd=ROOT)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_run(out: Path) -> dict[str, dict]:
    """path -> the record without volatile fields, with the sha256 of its delivered file."""
    items = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        item = {k: v for k, v in r.items() if k not in VOLATILE}
        item["sha256"] = sha256(out / r["output"]) if r.get("output") else None
        items[r["path"]] = item
    return items


def cut(out: Path, keep: int) -> None:
    """What a kill leaves: the first ``keep`` records, the other outputs gone."""
    lines = [ln for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
    for ln in lines[keep:]:
        r = json.loads(ln)
        if r.get("output"):
            (out / r["output"]).unlink(missing_ok=True)
    (out / "results.jsonl").write_text("".join(ln + "\n" for ln in lines[:keep]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, fields: dict[str, str], image: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
        for k, v in fields.items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
             f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + image
    body += f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type":
                                             f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=900) as resp:
        return resp.read(), json.loads(resp.headers["X-Advx-Result"])


def serve_cases(tiles: Path, captchas: Path, labels: list[str]) -> dict[str, dict]:
    port = _free_port()
    proc = subprocess.Popen([*ADVX, "serve", "--port", str(port), "--label-set",
                             ",".join(labels)], env=ENV, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            time.sleep(0.5)
        tile = next((tiles / "cat").glob("*.png"))
        png, rec = _post(base + "/harden", {"label": "cat"}, tile.read_bytes())
        out = {"serve-image": {tile.name: {**_strip(rec),
                                            "sha256": hashlib.sha256(png).hexdigest()}}}
        row = (captchas / "labels.csv").read_text().splitlines()[1].split(",")
        png, rec = _post(base + "/harden", {"text": row[1]}, (captchas / row[0]).read_bytes())
        out["serve-text"] = {row[0]: {**_strip(rec), "sha256": hashlib.sha256(png).hexdigest()}}
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def record(work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    tiles, captchas = work / "tiles", work / "captchas"
    write_tiles(tiles)
    write_captchas(captchas)
    labels = sorted(p.name.replace("_", " ") for p in tiles.iterdir())
    spec = write_solver_spec(work, labels)
    q = ["--quiet"]
    cases: dict[str, dict] = {}
    run([*ADVX, "harden", str(tiles), "--out", str(work / "image-defaults"), *q])
    cases["image-defaults"] = read_run(work / "image-defaults")
    run([*ADVX, "harden", str(tiles), "--out", str(work / "whitebox"), "--eps", "4",
         "--surrogates", f"onnx:{spec}", "--verifiers", f"onnx:{spec}", *q])
    cases["image-whitebox-spec"] = read_run(work / "whitebox")
    run([*ADVX, "harden", str(captchas), "--out", str(work / "text-defaults"), "--task", "text",
         *q])
    cases["text-defaults"] = read_run(work / "text-defaults")
    for case, src, extra in (("image-resume", "image-defaults", []),
                             ("text-resume", "text-defaults", ["--task", "text"])):
        out = work / case
        shutil.copytree(work / src, out)
        cut(out, len(cases[src]) // 2)
        inp = tiles if case.startswith("image") else captchas
        run([*ADVX, "harden", str(inp), "--out", str(out), "--resume", *extra, *q])
        cases[case] = read_run(out)
    cases.update(serve_cases(tiles, captchas, labels))
    return cases


# --- comparison ------------------------------------------------------------------------------

def readings(item: dict) -> dict:
    """What an item's record says about behaviour, under the field names of either layout."""
    keep = ("status", "stop_reason", "steps", "fooled_at", "fooled_every_view", "deciding",
            "label", "text", "target", "error", "predictions_before", "predictions_after",
            "selected_before", "selected_after", "probabilities_before", "probabilities_after",
            "margins", "margins_by_view", "selected_by_view_before", "selected_by_view_after",
            "read_before", "read_after", "cer_after", "linf", "l2", "psnr", "ssim", "sha256")
    out = {k: item.get(k) for k in keep if k in item}
    # the clean captcha was read under its own view only; since the task seam, under every
    # view (a solver is fooled under a view only where it read the clean captcha right)
    before = out.get("read_before")
    if isinstance(before, dict):
        out["read_before"] = {v: r.get("own") if isinstance(r, dict) else r
                              for v, r in before.items()}
    return out


def _moved(value, old: str, new: str):
    """``value`` with the work folder ``old`` read as ``new`` (model names carry it)."""
    return json.loads(json.dumps(value).replace(old, new)) if old and new else value


def compare(before: dict, after: dict) -> dict:
    out = {}
    before = _moved(before, before.get("work", "/tmp/advx-identity"), after.get("work", ""))
    for case, items in before["cases"].items():
        got = after["cases"].get(case, {})
        same_files = sum(got.get(p, {}).get("sha256") == it["sha256"] for p, it in items.items())
        diffs = []
        for p, it in items.items():
            a, b = readings(it), readings(got.get(p, {}))
            for k in a:
                if a[k] != b.get(k):
                    diffs.append(f"{p}: {k}: {a[k]!r} -> {b.get(k)!r}")
        out[case] = {"items": len(items), "same_sha256": same_files,
                     "same_readings": len(items) - len({d.split(':')[0] for d in diffs}),
                     "differences": diffs[:20]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--json", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/advx-identity"))
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "record":
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip()
        t0 = time.perf_counter()
        cases = record(args.work)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"commit": commit, "work": str(args.work),
                                         "cases": cases,
                                         "seconds": round(time.perf_counter() - t0, 1)},
                                        indent=1, sort_keys=True) + "\n")
        return 0
    result = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    ok = all(v["same_sha256"] == v["same_readings"] == v["items"] for v in result.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
