"""Which gradient stand-in lets an attack survive OpenCV's non-local means? (efficacy probe)

PGD on effnet-lite0 through one EOT transform (default eps 8/255, 20 steps, 12 tiles of the
efficacy benchmark); fooled rates of lite0 (attacked) and lite2 (never seen) after the real
filter. At eps 8 and 20 steps the identity and the frozen-weight Jacobian both reach 12 of 12;
a smaller budget tells them apart (the comparison in engine/nlm_jacobian.py's docstring):

    .venv/bin/python benchmarks/nlm_stand_ins.py
    .venv/bin/python benchmarks/nlm_stand_ins.py --eps 3 --alpha 0.75 --steps 10 --all \
        --stand-ins identity,frozen:21/2,frozen:21/1,frozen:15/1,frozen:11/1,frozen:9/1,frozen:7/1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy import LABELS, nlm_stand_in, photo_tiles, to_tensor

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

STAND_INS = {
    "bilateral": lambda: SoftDenoise(),
    "identity": lambda: RealDenoise(NonLocalMeans(), StraightThrough()),
    "bpda-bilateral": lambda: RealDenoise(NonLocalMeans(), SoftDenoise()),
    "blur": lambda: GaussianBlur(1.0, 1.0),
    "bpda-blur": lambda: RealDenoise(NonLocalMeans(), GaussianBlur(1.0, 1.0)),
}


def stand_in(name: str):
    """A named stand-in, or "frozen:S/K[/HC]": the real filter forward, its frozen-weight
    Jacobian over S x S offsets every K pixels backward (the engine's default: frozen:21/2)."""
    if name.startswith("frozen:"):
        return RealDenoise(NonLocalMeans(), nlm_stand_in(name))
    return STAND_INS[name]()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget, /255")
    p.add_argument("--alpha", type=float, default=1.0, help="step, /255")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--per-photo", type=int, default=2, help="photo_tiles(k) of the benchmark")
    p.add_argument("--all", action="store_true", help="every tile, not 12 of them")
    p.add_argument("--stand-ins", default=",".join([*STAND_INS, "frozen:21/2"]),
                   help=f"comma list of {', '.join(STAND_INS)} and frozen:SEARCH/STRIDE")
    args = p.parse_args()
    torch.set_num_threads(2)
    images, labels, _ = photo_tiles(args.per_photo)
    sel = list(range(len(images))) if args.all else list(range(0, len(images), 3))[:12]
    print(len(sel), "tiles")
    x = to_tensor([images[i] for i in sel])
    y = torch.tensor([LABELS.index(labels[i]) for i in sel])
    lite0 = create_classifier("effnet-lite0", LABELS)
    lite2 = create_classifier("effnet-lite2", LABELS)
    nlm = NonLocalMeans()
    for name in args.stand_ins.split(","):
        preset = Preset("probe", eot=(stand_in(name),), views=(View("own"),))
        attack = PGD(lite0, eps_01=args.eps / 255, alpha_01=args.alpha / 255, steps=args.steps,
                     eot=preset, generator=torch.Generator().manual_seed(0))
        t0 = time.time()
        adv = quantise(attack(x, y))
        with torch.no_grad():
            plain = float((lite0(adv).argmax(1) != y).float().mean())
            f0 = float((lite0(nlm(adv)).argmax(1) != y).float().mean())
            f2 = float((lite2(nlm(adv)).argmax(1) != y).float().mean())
        print(f"{name:16s} lite0 {plain:.3f}, after NLM: lite0 {f0:.3f}, lite2 {f2:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
