"""Cost of one attack step per OCR surrogate: forward and backward of the CTC loss through each
built-in solver's torch twin, a batch of drawn 160 x 60 captchas, in ms per captcha-step.

    .venv/bin/python benchmarks/text_step.py \
        --json benchmarks/results/throughput/throughput-text-step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    from advx.engine.tasks.text import DEFAULT_SOLVERS
    from advx.engine.tasks.text.draw import draw_captchas
    from advx.engine.tasks.text.models import TextEnsemble, load_text_solvers

    torch.set_num_threads(a.threads)
    caps = draw_captchas(a.batch, seed=0)
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
                     for _, im in caps])
    rows = torch.arange(a.batch)
    solvers, left_out = load_text_solvers()
    out = {}
    for s in solvers:
        model = s.text_model()
        ens = TextEnsemble([model])
        ens.set_truths([t for t, _ in caps])
        ens.loss_and_grad(x, rows)  # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            ens.loss_and_grad(x, rows)
            times.append(time.perf_counter() - t0)
        out[s.name] = {"ms_per_captcha_step": 1000 * statistics.median(times) / a.batch,
                       "batching": getattr(model, "alone", None)}
        print(s.name, json.dumps(out[s.name]), file=sys.stderr)
    total = sum(r["ms_per_captcha_step"] for r in out.values())
    result = {"batch": a.batch, "threads": a.threads, "solvers": out, "all_ms": total,
              "left_out": left_out, "default_solvers": list(DEFAULT_SOLVERS),
              "machine": {"python": platform.python_version(), "torch": torch.__version__},
              "command": "benchmarks/text_step.py " + " ".join(argv or sys.argv[1:])}
    print(f"all {total:.1f} ms per captcha-step", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
