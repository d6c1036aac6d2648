"""End to end: load PNG tiles from disk and harden them with :class:`Hardener`; seconds in all
and the shares of attack steps, verification, data loading and the rest.

The attack and verification seconds are the scheduler's own (``Scheduler.time``, which
synchronises CUDA around both, so queued GPU work is charged to the phase that launched it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..engine.devices import resolve_device
from .cases import BenchRow, short_name
from .flops import STEP_FLOPS_PER_FORWARD, device_peak, hardware_name
from .harness import TEMPLATES, ModelCache, Workload, bench_labels, measured, sync

if TYPE_CHECKING:
    from ..engine.config import HardenConfig

# the Scheduler.time keys whose shares of the wall time a row reports, besides "load"
SCHEDULER_PHASES = ("attack", "verify")


def write_images(root: Path, n: int, size: int, seed: int) -> list[Path]:
    """PNG tiles with smooth structure plus noise (compress like photos, not like pure noise)."""
    from ..engine.images import encode_image

    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        low = torch.rand(1, 3, 8, 8, generator=g)
        smooth = nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                           align_corners=False)
        x = (0.85 * smooth + 0.15 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)
        pixels = x[0].mul(255).round().byte().permute(1, 2, 0).numpy()
        paths.append(root / f"{i:05d}.png")
        paths[-1].write_bytes(encode_image(pixels, "png"))
    return paths


def verifier_forwards(steps: Sequence[int], n_views: int, verify_every: int) -> int:
    """Images each verifier scores in a run whose fooling margin is out of reach, given each
    image's steps: every view on admission and on the delivered file, and one view per lazy
    verification pass (the cheapest, which fools no row, so the pass stops there), one pass
    every ``verify_every`` steps. Exact when every image takes every step: the images of a
    batch then start and stop together."""
    return sum(2 * n_views + math.ceil(s / verify_every) for s in steps)


def prepare_end_to_end(n_images: int, surrogates: Sequence[str], verifiers: Sequence[str],
                       steps: int, device: str = "auto", *, cache: ModelCache,
                       batch_size: int = 16, image_size: int = 224, n_labels: int = 20,
                       config: HardenConfig | None = None, seed: int = 0) -> Workload:
    """Load ``n_images`` PNG tiles from disk and harden them with :class:`Hardener`.

    Every image runs all ``steps`` (the fooling margin is set out of reach: random-init models
    measure speed, not fooling), so the figure is the worst case of the step limit. The run is
    warmed up on up to one batch (an eighth of the images at most). ``config`` (a
    :class:`HardenConfig`) defaults to the engine's defaults.
    """
    from ..engine.api import Hardener
    from ..engine.config import HardenConfig
    from ..engine.images import load_image

    dev = resolve_device(device)
    labels = bench_labels(n_labels)
    cfg = dataclasses.replace(config or HardenConfig(), steps=steps, device=str(dev),
                              required_margin=math.inf, batch_size=batch_size, seed=seed)
    # models from the cache: built once per run, ONNX verifiers checked to be on CUDA there
    onnx_precision = "fp16" if dev.type == "cuda" else "fp32"  # as Hardener would export them
    scorers = [cache.verifier(v, n_labels, onnx_precision, dev) for v in verifiers]
    hardener = Hardener("labels",
                        surrogates=[cache.classifier(m, n_labels, dev) for m in surrogates],
                        verifiers=scorers, config=cfg, label_set=labels, templates=TEMPLATES)
    on = ", ".join(f"{short_name(v.name)} (onnx {onnx_precision}, {v.device})" for v in scorers)
    root = cache.workdir / f"e2e-{n_images}-{image_size}-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    paths = sorted(root.glob("*.png")) or write_images(root, n_images, image_size, seed)
    g = torch.Generator().manual_seed(seed)
    tile_labels = [labels[int(i)] for i in torch.randint(n_labels, (n_images,), generator=g)]
    last: dict[str, float] = {}

    def run() -> None:
        # Scheduler.time adds up over the hardener's runs: this run's seconds are the difference
        # (the scheduler the run ends with is read: Hardener may build another one on a run)
        sched = hardener.scheduler
        start = dict(sched.time)
        sync(dev)
        t0 = time.perf_counter()
        pixels = [load_image(p).pixels for p in paths]
        loaded = time.perf_counter()
        results = hardener.run(pixels, tile_labels)
        sync(dev)
        total = time.perf_counter() - t0
        end = hardener.scheduler
        base = start if end is sched else {}
        last.clear()
        last.update({k: end.time.get(k, 0.0) - base.get(k, 0.0) for k in SCHEDULER_PHASES})
        last.update(total=total, load=loaded - t0, steps=sum(r.steps for r in results),
                    fooled=sum(r.fooled for r in results),
                    forwards=verifier_forwards([r.steps for r in results], len(end.views),
                                               hardener.config.verify_every))

    n_warm = min(batch_size, max(1, n_images // 8))  # one batch on a GPU-sized run
    hardener.run([load_image(p).pixels for p in paths[:n_warm]], tile_labels[:n_warm])

    peak = device_peak(dev)
    sur: list[float | None] = []
    ver: list[float | None] = []
    if peak is not None:
        sur = [cache.gflops(m, cache.classifier(m, n_labels, dev)) for m in surrogates]
        ver = [cache.gflops(v, cache.classifier(v, n_labels, dev)) for v in verifiers]
    hw = hardware_name(dev)
    amp = hardener.scheduler.attack.amp_dtype
    eot_samples = hardener.scheduler.attack.eot_samples  # surrogate passes per step and image
    precision = f"{'bf16 autocast' if amp is not None else 'fp32'} + onnx {onnx_precision}"

    def row(seconds: float, runs: int) -> BenchRow:
        total = last["total"]
        fractions = {k: last[k] / total for k in (*SCHEDULER_PHASES, "load")}
        fractions["other"] = max(0.0, 1.0 - sum(fractions.values()))
        frac = None
        if peak is not None and None not in sur and None not in ver:
            flops = (last["steps"] * eot_samples * STEP_FLOPS_PER_FORWARD * sum(sur)
                     + last["forwards"] * sum(ver)) * 1e9
            frac = flops / total / (peak * 1e12)
        return BenchRow(
            name="e2e", backend="hardener", model="+".join(surrogates), batch=batch_size,
            precision=precision, device=dev.type, hardware=hw, seconds=seconds, runs=runs,
            images_per_s=n_images / seconds, image_steps_per_s=last["steps"] / seconds,
            flop_fraction=frac, fractions=fractions,
            notes=(f"{n_images} PNG tiles {image_size}px, {cfg.attack} {steps} steps max, all "
                   f"steps run; verifiers {on}; {int(last['fooled'])} fooled"),
        )

    return Workload(run, row, dev)


def end_to_end(n_images: int, surrogates: Sequence[str], verifiers: Sequence[str], steps: int,
               device: str = "auto", *, batch_size: int = 16, image_size: int = 224,
               n_labels: int = 20, config: HardenConfig | None = None,
               cache: ModelCache | None = None) -> BenchRow:
    """Seconds to load and harden ``n_images``, and the shares of attack, verification, data
    loading and the rest (scheduling, surrogate predictions, metrics: GPU idle)."""
    return measured(lambda c: prepare_end_to_end(n_images, surrogates, verifiers, steps, device,
                                                 batch_size=batch_size, image_size=image_size,
                                                 n_labels=n_labels, config=config, cache=c),
                    cache, warmup=0, iters=1)
