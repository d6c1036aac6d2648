"""Text CAPTCHA efficacy: how often OCR solvers misread hardened captchas, per view.

Settings (``--setting``):

- ``whitebox``: each built-in OCR solver alone, as surrogate and verifier (its own gradients);
- ``transfer``: for each built-in solver, a run attacking and verifying with the other three;
  the held-out solver (neither surrogate nor verifier) reads the delivered captchas;
- ``defaults``: the defaults (every built-in solver attacks and verifies);
- ``otsu-bound``: the white-box bound after Otsu binarisation: each solver alone, every
  gradient through the binarisation (its straight-through stand-in), eps everywhere (no mask,
  no SSIM floor, one rung), Otsu the one deciding view, no early stop before ``--steps``.
- ``median-bound``: the same bound for the 3x3 median (views own, median3, jpeg75; EOT through
  the soft median; the median the one deciding view).
- ``transfer-bound``: the transfer bound: as ``transfer``, but eps everywhere (no mask, no
  SSIM floor, one rung) and every one of ``--steps`` (default 100) spent on every captcha (a
  required margin no reading reaches), the last iterate delivered.

Captchas come from :func:`advx.engine.tasks.text.draw.draw_captchas` (seeded). A solver is fooled
under a view when it read the clean captcha right under that view and misreads the delivered
one; the figures are shares of those it read right. Seconds per captcha are the hardening wall
time of the run divided by its captchas (models built beforehand).

    .venv/bin/python benchmarks/text_efficacy.py --setting whitebox --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

SETTINGS = ("whitebox", "transfer", "defaults", "otsu-bound", "median-bound", "transfer-bound")
# the bounds' view presets: name -> (views, EOT transforms, the one deciding view)
BOUNDS = {"otsu-bound": (("own", "otsu"), ("soft-otsu",), ("otsu",)),
          "median-bound": (("own", "median3", "jpeg75"), ("softmedian3",), ("median3",))}


def fooled_table(scorers, texts, clean, after) -> dict[str, dict[str, dict]]:
    """solver -> view -> {n, read_clean, read_clean_rate, fooled, fooled_rate, cer}: the
    engine's figures (:func:`advx.engine.evaluate.figures`, one rule for every task: fooled
    among the captchas read right clean under that view), under this file's field names."""
    from advx.engine.evaluate import figures
    from advx.engine.tasks import get_task

    table: dict[str, dict[str, dict]] = {}
    for row in figures(get_task("text"), scorers, texts, after, clean):
        table.setdefault(row["model"], {})[row["view"]] = {
            "n": row["n"], "read_clean": row["right_clean"],
            "read_clean_rate": row["right_clean_rate"], "cer": row.get("cer"),
            "fooled": row["fooled"], "fooled_rate": row["fooled_rate"]}
    return table


def run_one(caps, surrogates, verifiers, judges, config) -> dict:
    from advx import Hardener
    from advx.engine.tasks import get_task
    from advx.engine.views.view import views_of

    texts = [t for t, _ in caps]
    images = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous() for _, a in caps]
    hardener = Hardener("text", surrogates=surrogates, verifiers=verifiers, config=config)
    t0 = time.perf_counter()
    results = hardener.run(images, texts)
    wall = time.perf_counter() - t0
    delivered = [torch.from_numpy(r.image).permute(2, 0, 1).contiguous() for r in results]
    task = get_task("text")
    readers, left_out = task.load_scorers(judges, device="cpu")
    if left_out:
        raise SystemExit(f"a judge cannot be loaded: {'; '.join(left_out)}")
    views = views_of(hardener.config.transforms)
    clean = task.answers(readers, images, views, texts)
    after = task.answers(readers, delivered, views, texts)
    table = fooled_table(readers, texts, clean, after)
    ssim = [r.ssim for r in results]
    return {
        "surrogates": list(surrogates), "verifiers": list(verifiers), "judges": list(judges),
        "engine_fooled_rate": sum(r.fooled for r in results) / len(results),
        "steps_mean": statistics.mean(r.steps for r in results),
        "ssim_mean": statistics.mean(ssim), "ssim_min": min(ssim),
        "linf_max": max(r.linf for r in results),
        "seconds_per_captcha": wall / len(results), "wall_s": wall,
        "time_split": {k: round(v, 2) for k, v in hardener.scheduler.time.items()},
        "stop_reasons": {k: sum(r.stop_reason == k for r in results)
                         for k in {r.stop_reason for r in results}},
        "per_view": table,
    }


def _pct(row: dict) -> str:
    r = row.get("fooled_rate")
    return "-" if r is None else f"{r:.0%}" + ("" if row["read_clean"] == row["n"] else
                                             f" (of {row['read_clean']})")


def markdown(paths: list[Path]) -> str:
    """One table row per run and judge: fooled per view, CER, SSIM, steps, seconds."""
    views = ("own", "grey", "jpeg75", "median3", "otsu", "jpeg50", "nlmeans", "resize0.5",
             "rotate3")
    head = ("| file | run | judge | " + " / ".join(views) + " | CER own | SSIM mean / min "
            "| steps | s / captcha |\n|---|---|---|---|---:|---:|---:|---:|")
    lines = [head]
    for p in paths:
        d = json.loads(p.read_text())
        for name, r in d["runs"].items():
            for j in r["judges"]:
                pv = r["per_view"][j]
                cells = " / ".join(_pct(pv[w]) if w in pv else "-" for w in views)
                lines.append(
                    f"| `{p.stem}` | {name} | {j} | {cells} | {pv['own']['cer']:.2f} | "
                    f"{r['ssim_mean']:.3f} / {r['ssim_min']:.3f} | {r['steps_mean']:.1f} | "
                    f"{r['seconds_per_captcha']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=SETTINGS)
    p.add_argument("--markdown", nargs="+", type=Path, metavar="JSON",
                   help="print the tables of these result files and exit")
    p.add_argument("--n", type=int, default=40, help="captchas drawn (default 40)")
    p.add_argument("--seed", type=int, default=0, help="drawing seed")
    p.add_argument("--solvers", default=None,
                   help="comma-separated built-in solvers to cover (default all four)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--texture-mask", default=None, help="a floor in (0, 1], or 'none'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.markdown:
        print(markdown(a.markdown))
        return 0
    if a.setting is None or a.json is None:
        p.error("--setting and --json are required (or --markdown FILES)")
    from advx import HardenConfig
    from advx.engine.schedule import scheduler
    from advx.engine.tasks.text import DEFAULT_SOLVERS
    from advx.engine.tasks.text.draw import draw_captchas

    torch.set_num_threads(a.threads)
    names = a.solvers.split(",") if a.solvers else list(DEFAULT_SOLVERS)
    over = {}
    if a.steps is not None:
        over["steps"] = a.steps
    if a.eps is not None:
        over["eps"] = a.eps
    if a.texture_mask is not None:
        over["texture_mask"] = None if a.texture_mask == "none" else float(a.texture_mask)
    if a.setting in BOUNDS:
        from advx.engine.views.presets import Preset, register_preset

        register_preset(Preset(a.setting, *BOUNDS[a.setting]))
        scheduler.NO_PROGRESS_PASSES = 1 << 30  # every step is spent: a bound
        over = {"steps": 100, "texture_mask": None, "ssim_floor": None, "eps_rungs": 1, **over,
                "transforms": a.setting}
    if a.setting == "transfer-bound":
        scheduler.NO_PROGRESS_PASSES = 1 << 30  # every step is spent: a bound
        over = {"steps": 100, "texture_mask": None, "ssim_floor": None, "eps_rungs": 1,
                "required_margin": 1e6, **over}
    config = HardenConfig(**over).for_task("text")  # transforms: the text preset unless set
    caps = draw_captchas(a.n, seed=a.seed)
    runs = {}
    if a.setting in ("whitebox", *BOUNDS):
        for s in names:
            runs[s] = run_one(caps, [s], [s], [s], config)
            print(s, json.dumps({w: r.get("fooled_rate") for w, r in
                                 runs[s]["per_view"][s].items()}), file=sys.stderr)
    elif a.setting in ("transfer", "transfer-bound"):
        for held in names:
            rest = [s for s in DEFAULT_SOLVERS if s != held]
            runs[held] = run_one(caps, rest, rest, [held], config)
            print(held, json.dumps({w: r.get("fooled_rate") for w, r in
                                    runs[held]["per_view"][held].items()}), file=sys.stderr)
    else:
        runs["defaults"] = run_one(caps, names, names, names, config)
    out = {"setting": a.setting, "n": a.n, "seed": a.seed, "config": dataclasses.asdict(config),
           "machine": {"cpu_threads": a.threads, "python": platform.python_version(),
                       "torch": torch.__version__},
           "command": "benchmarks/text_efficacy.py " + " ".join(argv or sys.argv[1:]),
           "runs": runs}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
