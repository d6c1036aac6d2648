"""Retraining benchmark: how long hardening holds once a solver is retrained on hardened items
(``advx adapt`` on a hardened set built here). Not part of the test command.

- ``text``: captchas of ``draw_captchas`` (seed 0), hardened white-box against
  captcha-whisperer (one surrogate, the real solver), 1,000 to train on and 100 held out;
  captcha-whisperer retrained on 0 / 50 / 200 / 1,000 of them.
- ``images``: 180 tiles of 224 px, 30 from each of the six packaged photos (one folder per
  photo: whole photos are held out), hardened with the image defaults (lite0 + lite1 ->
  lite2); lite2 retrained on 0 / 30 / 75 / 150 of the others, 3 epochs. A held-out photo must
  show a label that the training photos show (a copy never trained on a label learns to avoid
  it): of the six, only the motorcycle has two photos (stereo left and right), so the split's
  seed is the first whose held-out photo is one of those.

Beside the check, a control: the same copies trained on the training items' originals, read
on the same held-out hardened items (``control`` in the JSON). The work folder keeps every
stage (inputs, hardened run, the check): a rerun with the same ``--work`` goes on where a kill
left it (the control is trained again). ``--json`` gets the check's adapt.json with the phases'
wall times.

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
    "images": (10, 0.15, None, None, "effnet-lite2", (0, 30, 75, 150), 3),
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


def clean_control(run: Path, out: Path, solver: str, sizes, epochs: int, share: float,
                  seed: int) -> list[dict]:
    """The same copies trained on the training items' originals (not their hardened files),
    read on the same held-out hardened items: what any fine-tuning does to the perturbations,
    as against what learning them does."""
    import dataclasses

    import torch

    from advx.engine.adapt import AdaptConfig
    from advx.engine.adapt.split import split_rows
    from advx.engine.adapt.train import fit
    from advx.engine.evaluate import figures, load_set, read_pixels, read_set, scoring_options
    from advx.engine.views.presets import get_preset
    from advx.engine.views.view import views_of

    cfg, cpu = AdaptConfig(seed=seed), torch.device("cpu")
    data = load_set(run)
    task = data.task
    split = split_rows(data.rows, data.clean_root, share, cfg.seed)
    held = dataclasses.replace(data, rows=list(split.held), skipped=[])
    opts = scoring_options(task, data.run, [r.truth for r in data.rows])
    preset = get_preset((data.run.get("config") or {}).get("transforms") or task.preset)
    out_rows = []
    for n in [n for n in sizes if 0 < n <= len(split.train)]:
        rows = split.train[:n]
        images = [read_pixels(data.clean_root / r.clean)[0] for r in rows]
        trainee = task.trainee(solver, device=cpu, **opts)
        folder = out / f"n{n}"
        fit(trainee, images, [r.truth for r in rows], epochs=epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cpu,
            checkpoint=folder / "checkpoint.pt", on_epoch=lambda e: None)
        example = torch.stack([im for im in images if im.shape == images[0].shape][:4]) / 255
        name = trainee.save(folder, example.float(), f"{solver}@{n}-clean")
        scorers, _ = task.load_scorers([name], device="cpu",
                                       truths=[r.truth for r in held.rows], **opts)
        truths, answers, clean = read_set(dataclasses.replace(held, skipped=[]), scorers,
                                          views_of(preset))
        out_rows += [{"set": "held-out", "copy": "clean-trained", "trained_on": n,
                      "epoch": epochs, **r}
                     for r in figures(task, scorers, truths, answers, clean, preset.deciding)]
        print(f"{solver} trained on {n} originals: "
              f"{next(r for r in out_rows[::-1] if r['view'] == preset.views[0])['right_rate']}"
              f" of the held-out hardened items read ({preset.views[0]})")
    return out_rows


def seen_labels_seed(run: Path, share: float) -> int:
    """The first split seed whose held-out items' truths all occur among the training items'."""
    from advx.engine.adapt.split import split_rows
    from advx.engine.evaluate import load_set

    data = load_set(run)
    for seed in range(100):
        split = split_rows(data.rows, data.clean_root, share, seed)
        if {r.truth for r in split.held} <= {r.truth for r in split.train}:
            return seed
    raise SystemExit("no split holds out only labels that training shows")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--n", type=int, help="items to draw (text) / a third of the tiles per photo "
                                         "(images)")
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
    if not (run / "summary.json").exists() or not json.loads(
            (run / "summary.json").read_text()).get("complete"):
        harden_folder(inp, run, task="labels" if args.setting == "images" else "text",
                      labels_csv=csv, surrogates=sur, verifiers=ver,
                      resume=(run / "results.jsonl").exists(), show_progress=True)
    # the run's own wall time (a resumed or skipped run's too)
    times["harden_s"] = json.loads((run / "summary.json").read_text())["seconds"]
    t = time.perf_counter()
    seed = seen_labels_seed(run, share) if args.setting == "images" else 0
    state = adapt_run(run, out, solver=solver, show_progress=True,
                      config=AdaptConfig(sizes=sizes, epochs=epochs, held_out=share, seed=seed))
    times["adapt_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    control = clean_control(run, work / "control", solver, sizes, epochs, share, seed)
    times["control_s"] = round(time.perf_counter() - t, 1)
    print(state["headline"]["sentence"])
    print(json.dumps(times))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setting": args.setting, "times": times, **state,
                                         "control": control}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
