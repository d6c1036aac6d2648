"""Where one attack step of the defaults spends its time (not part of the test command).

Builds the default hardener (surrogates EfficientNet-Lite0 + Lite1, verifier Lite2, the
``solver`` preset), takes 16 real photo tiles and times, on the same batch:

- whole attack steps, as the scheduler runs them;
- the two surrogates' forward and backward alone (no input transform, own preprocessing);
- each EOT transform of the preset alone, forward and backward;
- one verification pass over every view of the matrix (not lazy).

    .venv/bin/python benchmarks/step_profile.py --steps 14 --rounds 3
    .venv/bin/python benchmarks/step_profile.py --cprofile     # the top functions instead
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, rounds: int) -> float:
    """The median of ``rounds`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--steps", type=int, default=14, help="attack steps timed (after 2 warm-up)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", default="{}", help="a JSON object of HardenConfig fields")
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args()

    import dataclasses
    import json

    from efficacy import LABELS, SETTINGS, photo_tiles, to_tensor

    from advx import HardenConfig, Hardener
    from advx.engine.scoring import quantise
    from advx.engine.views import score

    torch.set_num_threads(2)
    images, labels, _ = photo_tiles(max(1, args.tiles // 6 + 1))
    x = to_tensor(images[: args.tiles])
    y = torch.tensor([LABELS.index(lab) for lab in labels[: args.tiles]])
    surrogates, verifiers = SETTINGS["defaults"]
    config = dataclasses.replace(HardenConfig(), **json.loads(args.engine))
    h = Hardener(LABELS, surrogates=surrogates, verifiers=verifiers, config=config)
    attack, sched = h.scheduler.attack, h.scheduler
    state = attack.init(x, torch.full((len(x), 1, 1, 1), 8 / 255),
                        torch.full((len(x),), 2 / 255), labels=y)
    for _ in range(2):
        attack.step(state, y)
    if args.cprofile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.steps):
            attack.step(state, y)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return

    n = len(x)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        attack.step(state, y)
    step = (time.perf_counter() - t0) / args.steps
    print(f"{n} tiles, {h.config.transforms} preset, DI {h.config.diversity_prob}, "
          f"SGM {h.config.skip_gamma}")
    print(f"attack step (mean of {args.steps}):            {step * 1000:7.0f} ms")
    ens = attack.model
    bare = timed(lambda: ens.loss_and_grad(state.adv, y), args.rounds)
    print(f"surrogates fwd+bwd, own preprocessing:  {bare * 1000:7.0f} ms")
    for tr in (attack.eot.eot if attack.eot is not None else ()):
        def run(tr=tr):
            xx = state.adv.detach().requires_grad_(True)
            out = tr(xx, attack.generator)
            if out.requires_grad:
                torch.autograd.grad(out.sum(), xx)
        print(f"  EOT {tr!s:32s} fwd+bwd {timed(run, args.rounds) * 1000:7.0f} ms")
    delivered = quantise(state.adv)
    print(f"verification, every view (not lazy):   "
          f"{timed(lambda: sched.verify(delivered, y, torch.full_like(y, -1)), 1) * 1000:7.0f} ms")
    with torch.no_grad():
        for view in sched.views:
            for v in sched.verifiers:
                ms = timed(lambda v=v, view=view: score(v, delivered, view), 1) * 1000
                print(f"  view {view.name:12s} {v.name:14s} {ms:7.0f} ms")


if __name__ == "__main__":
    main()
