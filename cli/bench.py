"""``advx bench``: the throughput figures of benchmarks/, as one table."""

from __future__ import annotations

import dataclasses
import json

import click

from .common import fail_cleanly, list_option

SUITES = ("verify", "attack", "e2e", "all")


def _batch_sizes(_ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("expected positive integers, e.g. 1,32,256", param=param)
    return sizes


@click.command("bench")
@click.option("--suite", type=click.Choice(SUITES), default="all", show_default=True,
              help="verify: images/s of ONNX vs torch verifiers; attack: image-steps/s of "
                   "advx's PGD vs torchattacks'; e2e: hardening from disk, by phase.")
@click.option("--models", callback=list_option,
              help="Comma list: the verified models, and the surrogate ensemble of the attack "
                   "and e2e suites [default: the open_clip ViT-B-32, ViT-B-16 and RN50 towers, "
                   "random-init, on CUDA; effnet-lite0 on the CPU (e2e: effnet-lite0,1)].")
@click.option("--verifiers", callback=list_option,
              help="Comma list of the held-out verifiers of the e2e suite [default: "
                   "open_clip:ViT-B-32-quickgelu/none and timm:tf_efficientnet_lite2/none on "
                   "CUDA, effnet-lite2 instead of the latter on the CPU].")
@click.option("--batch-sizes", callback=_batch_sizes,
              help="Comma list of verification batch sizes [default: 1,32,256 on CUDA; 1,8 on "
                   "the CPU].")
@click.option("--images", type=click.IntRange(min=1),
              help="Images hardened by the e2e suite [default: 1000 on CUDA, 8 on the CPU].")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True, help="auto: CUDA when torch sees a GPU.")
@click.option("--quick", is_flag=True,
              help="Tiny sizes (batch 1, one attack step, two images): a smoke run, not figures.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead.")
def bench_cmd(suite: str, models: tuple[str, ...] | None, verifiers: tuple[str, ...] | None,
              batch_sizes: tuple[int, ...] | None, images: int | None, device: str,
              quick: bool, as_json: bool) -> None:
    """Measure verification, attack and end-to-end throughput; print one table.

    Each figure comes with the share of the GPU's dense bf16 peak it reaches (on a GPU whose
    peak is known). The same workloads run under pytest-benchmark with
    `pytest benchmarks --benchmark-json=FILE`. Models ending in /none are random-init: speed
    does not depend on the weights. Progress goes to stderr.

    \b
    Example:
      advx bench --suite all --device cuda          # the full suite on a GPU
      advx bench --suite verify --quick --device cpu
      advx bench --suite attack --models effnet-lite0,effnet-lite1 --json
    """
    from .. import bench
    from ..engine.devices import resolve_device

    with fail_cleanly():
        dev = resolve_device(device).type
        sizes = bench.default_sizes(dev, quick)
        if batch_sizes:
            sizes = dataclasses.replace(sizes, batch_sizes=batch_sizes)
        if images:
            sizes = dataclasses.replace(sizes, e2e_images=images)
        chosen = bench.SUITES if suite == "all" else (suite,)
        cases = []
        if "verify" in chosen:
            cases += bench.verify_cases(dev, models, sizes)
        if "attack" in chosen:
            cases += bench.attack_cases(dev, models, sizes)
        if "e2e" in chosen:
            cases += bench.e2e_cases(dev, models, verifiers, sizes)

        def on_row(row: bench.BenchRow) -> None:
            rate = row.images_per_s if row.name == "verify" else row.image_steps_per_s
            click.echo(f"{row.name} {row.model} {row.backend} b{row.batch}: {rate:,.1f}/s",
                       err=True)

        def on_skip(case: bench.Case, reason: str) -> None:
            click.echo(f"skipped {case}: {reason}", err=True)

        with bench.ModelCache() as cache:
            rows = bench.run_cases(cases, sizes, cache, on_row, on_skip)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        click.echo(bench.format_table(rows))
