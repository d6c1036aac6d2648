"""torch.compile (inductor) against eager for one surrogate's forward and backward to the input
gradient on the CPU (not part of the test command; RESULTS.md, "Tried since, for the 2x").

    .venv/bin/python benchmarks/compile_probe.py --model effnet-lite0 --batch 4
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="effnet-lite0")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    from advx.engine.zoo import create_classifier

    model = create_classifier(args.model, ("cat", "espresso", "motorcycle", "suit", "palace"))
    x = torch.rand(args.batch, 3, model.input_size, model.input_size,
                   generator=torch.Generator().manual_seed(0))

    def step(m) -> torch.Tensor:
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xr)[:, 0].sum(), xr)
        return g

    def bench(m) -> tuple[float, float]:
        step(m)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            step(m)
            times.append(time.perf_counter() - t0)
        return min(times), sorted(times)[len(times) // 2]

    print("eager best / median s:", bench(model))
    t0 = time.perf_counter()
    compiled = torch.compile(model)
    step(compiled)
    print(f"compile: {time.perf_counter() - t0:.1f} s")
    print("compiled best / median s:", bench(compiled))
    print("max |grad difference|:", float((step(model) - step(compiled)).abs().max()))


if __name__ == "__main__":
    main()
