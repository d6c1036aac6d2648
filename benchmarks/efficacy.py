"""Efficacy benchmark: how often hardened tiles fool solvers that see them their own way.

Not part of the test command (minutes of CPU). Real photos shipped in packages, real offline
EfficientNet-Lite weights. Three settings:

- ``defaults``: the engine's defaults (surrogates lite0 + lite1, verifier lite2); judged by an
  independent lite2 that preprocesses differently (the whole tile resized to 260 px, bicubic
  with antialias, no centre crop) under every view of the default matrix and views outside it,
  and by lite0 / lite1 as they are.
- ``transfer``: surrogate lite0 alone, verifier lite1; lite2 never seen, judged the same way.
- ``whitebox``: lite2 as surrogate and verifier (a solver attacked with its own gradients, as
  ``--surrogates onnx:S --verifiers onnx:S`` does with a foreign solver); judged the same way,
  so the views and the independent preprocessing are what is measured.

Each setting runs with ``--engine`` configurations (``current``: today's defaults; ``no-sgm``:
today's defaults without skip gradients; ``baseline``: the engine as it was before solver views,
without ladder, texture mask, SSIM floor or SGM), or a JSON object of HardenConfig fields.

    .venv/bin/python benchmarks/efficacy.py --setting defaults --engine current \\
        --json benchmarks/efficacy/defaults-current.json
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
    """Seeded square crops (60-100% of the short side, anywhere) resized to TILE px: images,
    labels, photo keys."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = load_photos()
    images, labels, keys = [], [], []
    for key, label in PHOTOS:
        im = photos[key]
        h, w = im.shape[:2]
        for _ in range(per_photo * 3):  # more than needed; the clean-correct ones are kept
            s = int(min(h, w) * rng.uniform(0.6, 1.0))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crop = Image.fromarray(np.ascontiguousarray(im[y : y + s, x : x + s]))
            images.append(np.asarray(crop.resize((TILE, TILE), Image.BICUBIC)))
            labels.append(label)
            keys.append(key)
    return images, labels, keys


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def judge_views():
    """The default matrix plus views outside it."""
    from advx.engine.transforms import CropShift, GaussianBlur, Jpeg, ResizeDownUp
    from advx.engine.views import Geometry, Median, NonLocalMeans, View

    inside = [View("none"), View("jpeg75", Jpeg(75, 75)), View("jpeg50", Jpeg(50, 50)),
              View("resize0.75", ResizeDownUp(0.75, 0.75)), View("median3", denoise=Median(3)),
              View("nlmeans", denoise=NonLocalMeans())]
    outside = [View("jpeg30", Jpeg(30, 30)), View("resize0.5", ResizeDownUp(0.5, 0.5)),
               View("lowres128", prescale=128), View("lowres96", prescale=96),
               View("crop-shift", CropShift(0.05, 0.02, True)),
               View("blur1.0", GaussianBlur(1.0, 1.0)),
               View("letterbox-bilinear", geometry=Geometry(fit="letterbox", antialias=False))]
    return inside, outside


def build_judges(label_set):
    from advx.engine.views import Geometry
    from advx.engine.zoo import create_classifier

    whole = Geometry(crop=1.0, interpolation="bicubic", antialias=True)
    lite2 = create_classifier("effnet-lite2", label_set)
    return {
        "lite2-whole-tile": (lite2, whole),
        "lite2-own": (lite2, None),
        "lite1": (create_classifier("effnet-lite1", label_set), None),
        "lite0": (create_classifier("effnet-lite0", label_set), None),
    }


@torch.no_grad()
def judge(images: list[np.ndarray], labels: list[str], label_set, judges, views) -> dict:
    from advx.engine.challenge import grid_solve_rate, sample_grids

    x = to_tensor(images)
    y = torch.tensor([label_set.index(lab) for lab in labels])
    grids = sample_grids(y.tolist(), 200, seed=0)
    out: dict = {}
    for name, (model, geometry) in judges.items():
        row = {}
        for view in views:
            xv = view.images(x)
            g = view.geometry or geometry
            preds = torch.cat([model(xv[i : i + 16], g).argmax(1)
                               for i in range(0, len(xv), 16)])
            row[view.name] = {"fooled": round(float((preds != y).float().mean()), 4),
                              "grid_solve_rate": grid_solve_rate(preds.tolist(), y.tolist(),
                                                                 grids)}
        out[name] = row
    return out


ENGINES = {
    # today's defaults
    "current": {},
    # the engine before solver views: JPEG preset, no ladder, no texture mask, no SSIM floor
    "baseline": {"transforms": "jpeg", "eps_rungs": 1, "texture_mask": None,
                 "ssim_floor": None, "patience": 0, "skip_gamma": 1.0, "nesterov": False},
    # today's defaults before the skip gradient (SGM) became one for transfer
    "no-sgm": {"skip_gamma": 1.0},
}


def drop_geometry_draws() -> None:
    """Ablation: every preset without its geometry draw (the engine before geometry EOT). A
    draw with p 0 takes nothing from the random stream, so the stream is otherwise the same."""
    set_geometry_p(0.0)


def set_geometry_p(p: float) -> None:
    """Probe: the presets that draw geometries draw one for a share ``p`` of the gradients."""
    from advx.engine import views

    for name, preset in list(views.PRESETS.items()):
        if preset.geometry is not None:
            views.PRESETS[name] = dataclasses.replace(
                preset, geometry=dataclasses.replace(preset.geometry, p=p))


def nlm_stand_in(spec: str):
    """The stand-in that ``spec`` names: "identity" or "frozen:S/K[/HC]"."""
    from advx.engine import views
    from advx.engine.nlm_jacobian import LinearizedNLM

    if spec == "identity":
        return views.StraightThrough()
    search, stride, *colour = spec.removeprefix("frozen:").split("/")
    return LinearizedNLM(search=int(search), stride=int(stride),
                         h_color=float(colour[0]) if colour else None)


def set_nlm_grad(spec: str) -> None:
    """Probe: the gradient stand-in behind the real non-local means in every preset's EOT:
    "identity" (straight-through, before 2026-11-30's fifth session), or "frozen:S/K[/HC]" (the
    frozen-weight Jacobian over S x S offsets every K pixels, with colour weights of strength
    HC if given; the default is frozen:21/2)."""
    from advx.engine import views

    soft = nlm_stand_in(spec)
    for name, preset in list(views.PRESETS.items()):
        eot = tuple(views.RealDenoise(t.real, soft)
                    if isinstance(t, views.RealDenoise) and isinstance(t.real, views.NonLocalMeans)
                    else t for t in preset.eot)
        views.PRESETS[name] = dataclasses.replace(preset, eot=eot)


def nlm_grad_in_use() -> str:
    """The solver preset's stand-in behind the real non-local means, as --nlm-grad spells it."""
    from advx.engine import views
    from advx.engine.nlm_jacobian import LinearizedNLM

    soft = next(t.soft for t in views.PRESETS["solver"].eot if isinstance(t, views.RealDenoise))
    if isinstance(soft, LinearizedNLM):
        colour = f"/{soft.h_color:g}" if soft.h_color is not None else ""
        return f"frozen:{soft.search}/{soft.stride}{colour}"
    return "identity" if isinstance(soft, views.StraightThrough) else str(soft)


SETTINGS = {  # surrogates, verifiers
    "defaults": (("effnet-lite0", "effnet-lite1"), ("effnet-lite2",)),
    "transfer": (("effnet-lite0",), ("effnet-lite1",)),
    "whitebox": (("effnet-lite2",), ("effnet-lite2",)),
}


def render(paths: list[Path]) -> str:
    """Markdown tables of result files (for EFFICACY.md)."""
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
            for judge, row in d[part].items():
                lines.append(f"| `{p.stem}` | {judge} | "
                             + " | ".join(f"{row[v]['fooled']:.0%}" for v in views) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--markdown":
        print(render([Path(a) for a in sys.argv[2:]]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=tuple(SETTINGS), default="defaults")
    p.add_argument("--engine", default="current",
                   help=f"{', '.join(ENGINES)}, or a JSON object of HardenConfig fields")
    p.add_argument("--tiles", type=int, default=60, help="clean-correct tiles to harden")
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--no-geometry", action="store_true",
                   help="ablation: the presets without their geometry draw (the engine "
                        "before geometry EOT, same random stream otherwise)")
    p.add_argument("--geometry-p", type=float,
                   help="probe: the share of gradients through a drawn geometry "
                        "(default: the presets', 0.75)")
    p.add_argument("--nlm-grad", help="probe: the gradient behind the real non-local means in "
                   "EOT, identity or frozen:SEARCH/STRIDE[/H_COLOR] (default: the presets', "
                   "frozen:21/2)")
    args = p.parse_args(argv)
    if args.nlm_grad:
        set_nlm_grad(args.nlm_grad)
    if args.no_geometry:
        drop_geometry_draws()
    if args.geometry_p is not None:
        set_geometry_p(args.geometry_p)

    from advx import HardenConfig, Hardener
    from advx.engine import metrics

    torch.set_num_threads(2)
    overrides = ENGINES.get(args.engine)
    if overrides is None:
        overrides = json.loads(args.engine)
    label_set = LABELS
    judges = build_judges(label_set)
    # keep the tiles every judge reads right when clean (under its own preprocessing)
    per_label = max(1, args.tiles // len(PHOTOS))
    images, labels, keys = photo_tiles(per_label + 1)
    x = to_tensor(images)
    y = torch.tensor([label_set.index(lab) for lab in labels])
    ok = torch.ones(len(images), dtype=torch.bool)
    with torch.no_grad():
        for model, geometry in judges.values():
            ok &= torch.cat([model(x[i : i + 16], geometry).argmax(1)
                             for i in range(0, len(x), 16)]) == y
    keep, seen = [], {}
    for i in np.flatnonzero(ok.numpy()).tolist():
        key = keys[i]
        if seen.get(key, 0) < per_label:
            keep.append(i)
            seen[key] = seen.get(key, 0) + 1
    images, labels = [images[i] for i in keep], [labels[i] for i in keep]
    surrogates, verifiers = SETTINGS[args.setting]
    config = dataclasses.replace(HardenConfig(eps=args.eps, steps=args.steps), **overrides)
    t0 = time.perf_counter()
    hardener = Hardener(label_set, surrogates=surrogates, verifiers=verifiers, config=config)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = hardener.run(images, labels)
    seconds = time.perf_counter() - t0
    hardened = [r.image for r in results]
    inside, outside = judge_views()
    figures = {
        "setting": args.setting, "engine": args.engine,
        "geometry_eot": not args.no_geometry, "geometry_p": args.geometry_p,
        "nlm_grad": nlm_grad_in_use(),
        "config": dataclasses.asdict(hardener.config),
        "surrogates": list(surrogates), "verifiers": list(verifiers),
        "tiles": len(images), "per_photo": seen, "labels": list(label_set),
        "fooled_by_engine": round(sum(r.fooled for r in results) / len(results), 4),
        "ssim": {"mean": round(float(np.mean([r.ssim for r in results])), 4),
                 "min": round(float(np.min([r.ssim for r in results])), 4),
                 "p10": round(float(np.percentile([r.ssim for r in results], 10)), 4)},
        "psnr_mean": round(float(np.mean([r.psnr for r in results])), 2),
        "linf_mean": round(float(np.mean([r.linf for r in results])), 2),
        "steps_mean": round(float(np.mean([r.steps for r in results])), 2),
        "seconds_per_image": round(seconds / len(results), 3),
        "seconds": round(seconds, 1), "setup_seconds": round(setup, 1),
        "scheduler_time": {k: round(v, 1) for k, v in hardener.scheduler.time.items()},
        "clean": judge(images, labels, label_set, judges, inside[:1]),
        "inside": judge(hardened, labels, label_set, judges, inside),
        "outside": judge(hardened, labels, label_set, judges, outside),
    }
    # SSIM recomputed on the delivered PNG pixels, independently of the engine's figure
    ssim = metrics.ssim(to_tensor(hardened), to_tensor(images))
    figures["ssim"]["recomputed_min"] = round(float(ssim.min()), 4)
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
