"""Retraining benchmark: how long hardening holds once a solver is retrained on hardened items
(``advx adapt`` on a hardened set built here). Not part of the test command.

- ``text``: captchas of ``draw_captchas`` (seed 0), hardened white-box against
  captcha-whisperer (one surrogate, the real solver), 1,000 to train on and 100 held out;
  captcha-whisperer retrained on 0 / 50 / 200 / 1,000 of them.
- ``images``: 224 px tiles of the six packaged photos (one folder per photo: whole photos are
  held out), hardened with the image defaults (lite0 + lite1 -> lite2); lite2 retrained.

The work folder keeps every stage (inputs, hardened run, the check): a rerun with the same
``--work`` goes on where a kill left it. ``--json`` gets the check's adapt.json with the
phases' wall times.

    .venv/bin/python benchmarks/adapt.py --setting text --work /tmp/adapt-text \
        --json benchmarks/results/adapt/text-whisperer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SETTINGS = {
    # items drawn, held-out share, surrogates, verifiers, solver retrained, sizes, epochs
    "text": (1100, 100 / 1100, ["captcha-whisperer"], ["captcha-whisperer"],
             "captcha-whisperer", (0, 50, 200, 1000), 5),
    "images": (13, 0.2, None, None, "effnet-lite2", (0, 25, 100, 150), 5),
}


def write_text(folder: Path, n: int) -> Path:
    from advx.engine.tasks.text.draw import write_captcha_folder

    return write_captcha_folder(folder, n, seed=0)


def write_images(folder: Path, per_photo: int) -> Path:
    """Tiles in one folder per photo, and a labels CSV."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from efficacy import photo_tiles

    images, labels, keys = photo_tiles(per_photo, seed=0)
    rows, seen = ["path,label"], {}
    for px, label, key in zip(images, labels, keys, strict=True):
        i = seen[key] = seen.get(key, -1) + 1
        (folder / key).mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(folder / key / f"{i:03d}.png")
        rows.append(f"{key}/{i:03d}.png,{label}")
    csv = folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--n", type=int, help="items to draw (text) / tiles per photo x 3 (images)")
    p.add_argument("--sizes", help="comma list of training set sizes")
    p.add_argument("--epochs", type=int)
    args = p.parse_args(argv)

    import torch

    from advx.engine.adapt import AdaptConfig, adapt_run
    from advx.engine.folder.run import harden_folder

    torch.set_num_threads(2)
    n, share, sur, ver, solver, sizes, epochs = SETTINGS[args.setting]
    n = args.n or n
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else sizes
    epochs = args.epochs or epochs
    work = args.work
    inp, run, out = work / "in", work / "run", work / "adapt"
    times = {}
    t = time.perf_counter()
    csv = inp / "labels.csv"
    if not csv.exists():
        csv = write_text(inp, n) if args.setting == "text" else write_images(inp, n)
    times["inputs_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    if not (run / "summary.json").exists() or not json.loads(
            (run / "summary.json").read_text()).get("complete"):
        harden_folder(inp, run, task="labels" if args.setting == "images" else "text",
                      labels_csv=csv, surrogates=sur, verifiers=ver,
                      resume=(run / "results.jsonl").exists(), show_progress=True)
    times["harden_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    state = adapt_run(run, out, solver=solver, show_progress=True,
                      config=AdaptConfig(sizes=sizes, epochs=epochs, held_out=share))
    times["adapt_s"] = round(time.perf_counter() - t, 1)
    print(state["headline"]["sentence"])
    print(json.dumps(times))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setting": args.setting, "times": times, **state},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
