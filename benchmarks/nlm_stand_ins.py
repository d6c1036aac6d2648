"""Which gradient stand-in lets an attack survive OpenCV's non-local means? (efficacy probe)

PGD (eps 8/255, 20 steps) on effnet-lite0 through one EOT transform, 12 tiles of the efficacy
benchmark; fooled rates of lite0 (attacked) and lite2 (never seen) after the real filter.

    .venv/bin/python benchmarks/nlm_stand_ins.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import LABELS, photo_tiles, to_tensor

from advx.engine.attacks import PGD
from advx.engine.scheduler import quantise
from advx.engine.transforms import GaussianBlur
from advx.engine.views import (
    NonLocalMeans,
    Preset,
    RealDenoise,
    SoftDenoise,
    StraightThrough,
    View,
)
from advx.engine.zoo import create_classifier


def main() -> None:
    torch.set_num_threads(2)
    images, labels, _ = photo_tiles(2)
    sel = list(range(0, len(images), 3))[:12]
    x = to_tensor([images[i] for i in sel])
    y = torch.tensor([LABELS.index(labels[i]) for i in sel])
    lite0 = create_classifier("effnet-lite0", LABELS)
    lite2 = create_classifier("effnet-lite2", LABELS)
    nlm = NonLocalMeans()
    stand_ins = {
        "bilateral only": SoftDenoise(),
        "real NLM, identity backward": RealDenoise(NonLocalMeans(), StraightThrough()),
        "real NLM, bilateral backward": RealDenoise(NonLocalMeans(), SoftDenoise()),
        "Gaussian blur 1.0 only": GaussianBlur(1.0, 1.0),
        "real NLM, blur backward": RealDenoise(NonLocalMeans(), GaussianBlur(1.0, 1.0)),
    }
    for name, t in stand_ins.items():
        preset = Preset("probe", eot=(t,), views=(View("own"),))
        attack = PGD(lite0, eps_01=8 / 255, alpha_01=1 / 255, steps=20, eot=preset,
                     generator=torch.Generator().manual_seed(0))
        t0 = time.time()
        adv = quantise(attack(x, y))
        with torch.no_grad():
            plain = float((lite0(adv).argmax(1) != y).float().mean())
            f0 = float((lite0(nlm(adv)).argmax(1) != y).float().mean())
            f2 = float((lite2(nlm(adv)).argmax(1) != y).float().mean())
        print(f"{name:30s} lite0 {plain:.2f}, after NLM: lite0 {f0:.2f}, lite2 {f2:.2f} "
              f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
