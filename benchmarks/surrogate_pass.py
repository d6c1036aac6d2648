"""One attack step's surrogate work, timed: EfficientNet-Lite0 + Lite1 (the default surrogates)
forward and backward on a batch, at several CPU micro-batch sizes (not part of the test command).

    .venv/bin/python benchmarks/surrogate_pass.py --batch 16 --micro 16,8,4 --rounds 3
    .venv/bin/python benchmarks/surrogate_pass.py --no-fold     # batch norms kept
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--micro", default="16,8,4", help="comma list of rows per backward pass")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-fold", action="store_true", help="keep the batch norms (for comparison)")
    args = p.parse_args()
    if args.no_fold:
        import advx.engine.zoo.model as zoo_model

        zoo_model.fold_batchnorm = lambda *a, **k: 0

    from advx.engine.ensemble import Ensemble
    from advx.engine.zoo import create_classifier

    labels = ("cat", "espresso", "motorcycle", "suit", "palace")
    members = [create_classifier(n, labels, device=args.device)
               for n in ("effnet-lite0", "effnet-lite1")]
    print("batch norms folded:", {m.name: m.folded_layers for m in members})
    ens = Ensemble(members)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(args.device)
    y = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    ens.loss_and_grad(x, y)  # warm-up
    for micro in (int(m) for m in args.micro.split(",")):
        ens.micro_batch = micro
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ens.loss_and_grad(x, y)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(f"micro-batch {micro:3d}: best {min(times):.3f} s, "
              f"median {sorted(times)[len(times) // 2]:.3f} s for {args.batch} images")


if __name__ == "__main__":
    main()
