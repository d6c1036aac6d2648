"""Efficacy benchmark: how often hardened tiles fool solvers that see them their own way.

Not part of the test command (minutes of CPU per run). Real photos shipped in packages
(scikit-image, matplotlib, scikit-learn), real offline EfficientNet-Lite weights. Settings:

- ``defaults``: the engine's default ensemble (surrogates lite0 + lite1, verifier lite2).
- ``transfer``: surrogate lite0 alone, verifier lite1; lite2 never takes part.
- ``whitebox``: lite2 as surrogate and verifier (a solver attacked with its own gradients, as
  ``--surrogates onnx:S --verifiers onnx:S`` does with a foreign solver).

Every setting is judged the same way, on the delivered PNG pixels: by an independent lite2 that
preprocesses differently (the whole tile resized to 260 px, bicubic with antialias, no centre
crop), by lite2, lite1 and lite0 with their own preprocessing, under every view of the default
matrix and views outside it. ``--engine`` picks the HardenConfig: a name of ENGINES or a JSON
object of HardenConfig fields. See benchmarks/README.md for the figures.

    .venv/bin/python benchmarks/efficacy.py --setting transfer --json transfer.json
    .venv/bin/python benchmarks/efficacy.py --markdown benchmarks/results/efficacy/transfer.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

PHOTOS = (("chelsea", "cat"), ("coffee", "espresso"), ("stereo_motorcycle", "motorcycle"),
          ("stereo_motorcycle_right", "motorcycle"), ("grace_hopper", "suit"), ("china", "palace"))
LABELS = ("cat", "espresso", "motorcycle", "suit", "palace")
TILE = 224

SETTINGS = {  # surrogates, verifiers
    "defaults": (("effnet-lite0", "effnet-lite1"), ("effnet-lite2",)),
    "transfer": (("effnet-lite0",), ("effnet-lite1",)),
    "whitebox": (("effnet-lite2",), ("effnet-lite2",)),
}

ENGINES = {
    # the engine's defaults
    "current": {},
    # the engine without solver views and perceptual budget: the JPEG preset, one eps rung, a
    # uniform budget and no SSIM floor (the reference of the cost ratio)
    "baseline": {"transforms": "jpeg", "eps_rungs": 1, "texture_mask": None, "ssim_floor": None},
}


# --- tiles -------------------------------------------------------------------------------------


def load_photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook
    import skimage.data as sd
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, _ = load_sample_images().images
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    left, right = sd.stereo_motorcycle()[:2]
    return {"chelsea": sd.chelsea(), "coffee": sd.coffee(), "stereo_motorcycle": left,
            "stereo_motorcycle_right": right, "grace_hopper": hopper, "china": china}


def photo_tiles(per_photo: int, seed: int = 0
                ) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Seeded square crops (60-100% of the short side, anywhere) resized to TILE px, three
    candidates per wanted tile: images, labels, photo keys."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = load_photos()
    images, labels, keys = [], [], []
    for key, label in PHOTOS:
        im = photos[key]
        h, w = im.shape[:2]
        for _ in range(per_photo * 3):
            s = int(min(h, w) * rng.uniform(0.6, 1.0))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crop = Image.fromarray(np.ascontiguousarray(im[y : y + s, x : x + s]))
            images.append(np.asarray(crop.resize((TILE, TILE), Image.BICUBIC)))
            labels.append(label)
            keys.append(key)
    return images, labels, keys


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def predict(model, x: torch.Tensor, geometry) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 16], geometry).argmax(1) for i in range(0, len(x), 16)])


def clean_correct(images: list[np.ndarray], labels: list[str], keys: list[str], judges,
                  per_photo: int) -> tuple[list[int], dict[str, int]]:
    """The first ``per_photo`` tiles of each photo that every judge reads right when clean."""
    x = to_tensor(images)
    y = torch.tensor([LABELS.index(lab) for lab in labels])
    ok = torch.ones(len(images), dtype=torch.bool)
    for model, geometry in judges.values():
        ok &= predict(model, x, geometry) == y
    keep, seen = [], {}
    for i in np.flatnonzero(ok.numpy()).tolist():
        if seen.get(keys[i], 0) < per_photo:
            keep.append(i)
            seen[keys[i]] = seen.get(keys[i], 0) + 1
    return keep, seen


# --- judges ------------------------------------------------------------------------------------


def judge_views():
    """The default matrix (``none`` is the file as delivered) and views outside it."""
    from advx.engine.views.denoise import Median, NonLocalMeans
    from advx.engine.views.transforms import CropShift, GaussianBlur, Jpeg, ResizeDownUp
    from advx.engine.views.view import View
    from advx.export.geometry import Geometry

    inside = [View("none"), View("jpeg75", Jpeg(75, 75)), View("jpeg50", Jpeg(50, 50)),
              View("resize0.75", ResizeDownUp(0.75, 0.75)), View("median3", denoise=Median(3)),
              View("nlmeans", denoise=NonLocalMeans())]
    outside = [View("jpeg30", Jpeg(30, 30)), View("resize0.5", ResizeDownUp(0.5, 0.5)),
               View("lowres128", prescale=128), View("lowres96", prescale=96),
               View("crop-shift", CropShift(0.05, 0.02, True)),
               View("blur1.0", GaussianBlur(1.0, 1.0)),
               View("letterbox-bilinear", geometry=Geometry(fit="letterbox", antialias=False))]
    return inside, outside


def build_judges():
    """name -> (classifier, geometry); geometry None is the classifier's own preprocessing."""
    from advx.export.geometry import Geometry
    from advx.export.zoo import create_classifier

    whole = Geometry(crop=1.0, interpolation="bicubic", antialias=True)
    lite2 = create_classifier("effnet-lite2", LABELS)
    return {
        "lite2-whole-tile": (lite2, whole),
        "lite2-own": (lite2, None),
        "lite1": (create_classifier("effnet-lite1", LABELS), None),
        "lite0": (create_classifier("effnet-lite0", LABELS), None),
    }


def judge(images: list[np.ndarray], labels: list[str], judges, views) -> dict:
    """judge -> view -> share of tiles answered wrong, and the solve rate of 3x3 grids."""
    from advx.engine.tasks.labels.grids import grid_solve_rate, sample_grids

    x = to_tensor(images)
    y = torch.tensor([LABELS.index(lab) for lab in labels])
    grids = sample_grids(y.tolist(), 200, seed=0)
    out: dict = {}
    for name, (model, geometry) in judges.items():
        row = {}
        for view in views:
            preds = predict(model, view.images(x), view.geometry or geometry)
            row[view.name] = {"fooled": round(float((preds != y).float().mean()), 4),
                              "grid_solve_rate": grid_solve_rate(preds.tolist(), y.tolist(),
                                                                 grids)}
        out[name] = row
    return out


# --- the run -----------------------------------------------------------------------------------


def engine_overrides(engine: str) -> dict:
    """The HardenConfig fields that ``--engine`` names, checked against HardenConfig."""
    from advx import HardenConfig

    if engine in ENGINES:
        overrides = ENGINES[engine]
    else:
        try:
            overrides = json.loads(engine)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--engine: not one of {', '.join(ENGINES)} nor a JSON object "
                             f"({e})") from e
        if not isinstance(overrides, dict):
            raise SystemExit("--engine: a JSON object of HardenConfig fields, e.g. "
                             "'{\"eps_rungs\": 2}'")
    fields = {f.name for f in dataclasses.fields(HardenConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SystemExit(f"--engine: unknown HardenConfig fields {unknown}; "
                         f"known: {', '.join(sorted(fields))}")
    return overrides


def run(setting: str, engine: str, per_photo: int, eps: float, steps: int) -> dict:
    """Harden the clean-correct tiles in ``setting`` with the ``engine`` config; the figures."""
    from advx import HardenConfig, Hardener
    from advx.engine import metrics

    overrides = engine_overrides(engine)
    judges = build_judges()
    images, labels, keys = photo_tiles(per_photo + 1)
    keep, seen = clean_correct(images, labels, keys, judges, per_photo)
    images, labels = [images[i] for i in keep], [labels[i] for i in keep]
    surrogates, verifiers = SETTINGS[setting]
    config = dataclasses.replace(HardenConfig(eps=eps, steps=steps), **overrides)
    t0 = time.perf_counter()
    hardener = Hardener("labels", surrogates=surrogates, verifiers=verifiers, config=config,
                        label_set=LABELS)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = hardener.run(images, labels)
    seconds = time.perf_counter() - t0
    hardened = [r.image for r in results]
    ssim = [r.ssim for r in results]
    inside, outside = judge_views()
    figures = {
        "setting": setting, "engine": engine, "config": dataclasses.asdict(hardener.config),
        "surrogates": list(surrogates), "verifiers": list(verifiers),
        "tiles": len(images), "per_photo": seen, "labels": list(LABELS),
        "fooled_by_engine": round(sum(r.fooled for r in results) / len(results), 4),
        "ssim": {"mean": round(float(np.mean(ssim)), 4), "min": round(float(np.min(ssim)), 4),
                 "p10": round(float(np.percentile(ssim, 10)), 4)},
        "psnr_mean": round(float(np.mean([r.psnr for r in results])), 2),
        "linf_mean": round(float(np.mean([r.linf for r in results])), 2),
        "steps_mean": round(float(np.mean([r.steps for r in results])), 2),
        "seconds_per_image": round(seconds / len(results), 3),
        "seconds": round(seconds, 1), "setup_seconds": round(setup, 1),
        "scheduler_time": {k: round(v, 1) for k, v in hardener.scheduler.time.items()},
        "clean": judge(images, labels, judges, inside[:1]),
        "inside": judge(hardened, labels, judges, inside),
        "outside": judge(hardened, labels, judges, outside),
    }
    # SSIM recomputed on the delivered pixels, independently of the engine's own figure
    recomputed = metrics.ssim(to_tensor(hardened), to_tensor(images))
    figures["ssim"]["recomputed_min"] = round(float(recomputed.min()), 4)
    return figures


def render(paths: list[Path]) -> str:
    """Markdown tables of result files: the run's figures, then each judge's fooled share per
    view (the views of the first file)."""
    runs = [json.loads(p.read_text()) for p in paths]
    lines = ["| run | engine fooled | SSIM mean / min | PSNR | L-inf | steps | s / image | "
             "wall (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p, d in zip(paths, runs, strict=True):
        lines.append(f"| `{p.stem}` | {d['fooled_by_engine']:.0%} | {d['ssim']['mean']:.3f} / "
                     f"{d['ssim']['min']:.3f} | {d['psnr_mean']:.1f} | {d['linf_mean']:.2f} | "
                     f"{d['steps_mean']:.1f} | {d['seconds_per_image']:.2f} | "
                     f"{d['seconds']:.0f} |")
    for part in ("inside", "outside"):
        views = list(next(iter(runs[0][part].values())))
        lines += ["", f"Share of tiles answered wrong, views {part} the default matrix:", "",
                  "| run | judge | " + " | ".join(views) + " |",
                  "|---|---|" + "---:|" * len(views)]
        for p, d in zip(paths, runs, strict=True):
            for name, row in d[part].items():
                cells = [f"{row[v]['fooled']:.0%}" if v in row else "-" for v in views]
                lines.append(f"| `{p.stem}` | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=tuple(SETTINGS), default="defaults",
                   help="defaults: lite0 + lite1 -> lite2; transfer: lite0 -> lite1, lite2 "
                        "held out; whitebox: lite2 -> lite2 (default: %(default)s)")
    p.add_argument("--engine", default="current",
                   help=f"{' or '.join(ENGINES)}, or a JSON object of HardenConfig fields, "
                        "e.g. '{\"eps_rungs\": 2}' (default: %(default)s)")
    p.add_argument("--per-photo", type=int, default=10,
                   help="clean-correct tiles per photo, six photos (default: %(default)s: "
                        "60 tiles; 4 gives the 24-tile probes)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget in /255 "
                   "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="step limit (default: %(default)s)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's; the kept figures ran on 2)")
    p.add_argument("--json", type=Path, help="write the figures here as well as to stdout")
    p.add_argument("--markdown", type=Path, nargs="+", metavar="RESULT",
                   help="print the tables of these result files and exit (runs nothing)")
    args = p.parse_args(argv)
    if args.per_photo < 1:
        p.error("--per-photo must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        runs = [p for p in args.markdown if "inside" in json.loads(p.read_text())]
        for p in sorted(set(args.markdown) - set(runs)):
            print(f"skipped {p}: not an efficacy result", file=sys.stderr)
        print(render(runs))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = run(args.setting, args.engine, args.per_photo, args.eps, args.steps)
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
