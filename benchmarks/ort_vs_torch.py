"""EfficientNet-Lite0's forward on the CPU: onnxruntime against torch eager, NCHW and
channels_last, and torch's forward + backward to the input (not part of the test command).

    .venv/bin/python benchmarks/ort_vs_torch.py --batch 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def timed(fn, rounds: int) -> float:
    fn()  # warm-up
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from advx.engine.zoo import create_classifier

    torch.set_num_threads(2)
    core = create_classifier("effnet-lite0", ("cat", "espresso", "motorcycle"), device="cpu").core
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        nchw = timed(lambda: core(x), args.rounds)
        last = timed(lambda: core(cl), args.rounds)

    def fwd_bwd() -> None:
        xg = cl.clone().requires_grad_(True)
        torch.autograd.grad(core(xg)[:, 0].sum(), xg)

    both = timed(fwd_bwd, args.rounds)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lite0.onnx"
        torch.onnx.export(core, (x[:1],), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        onnx = timed(lambda: s.run(None, {"x": xn}), args.rounds)
    print(f"{args.batch} tiles, median of {args.rounds}: torch forward NCHW {nchw * 1000:.0f} ms, "
          f"channels_last {last * 1000:.0f} ms; onnxruntime forward {onnx * 1000:.0f} ms; "
          f"torch forward + backward (channels_last) {both * 1000:.0f} ms")


if __name__ == "__main__":
    main()
