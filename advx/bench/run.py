"""A suite's cases prepared and measured one after another, with the models of a shared cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..export.zoo import ModelUnavailableError
from .cases import SUITES, BenchRow, BenchUnavailable, Case, SuiteSizes, rounds
from .e2e import prepare_end_to_end
from .harness import ModelCache, Workload, measure
from .throughput import prepare_attack, prepare_verification


def prepare_case(case: Case, cache: ModelCache) -> Workload:
    """The case's workload, or :class:`BenchUnavailable` when a package or the weights it
    needs are not installed."""
    try:
        return _prepare(case, cache)
    except ImportError as e:
        raise BenchUnavailable(f"a package it needs is not installed ({e})") from e
    except ModelUnavailableError as e:
        raise BenchUnavailable(str(e)) from e


def _prepare(case: Case, cache: ModelCache) -> Workload:
    if case.name == "verify":
        return prepare_verification(case.models[0], case.batch, case.backend, case.device,
                                    cache=cache)
    if case.name == "attack":
        return prepare_attack(case.models, case.batch, case.steps, case.backend, case.device,
                              cache=cache)
    if case.name == "e2e":
        return prepare_end_to_end(case.images, case.models, case.verifiers, case.steps,
                                  case.device, batch_size=case.batch, cache=cache)
    raise ValueError(f"unknown suite {case.name!r}; choose one of {SUITES}")


def run_cases(cases: Sequence[Case], sizes: SuiteSizes, cache: ModelCache,
              on_row: Callable[[BenchRow], None] | None = None,
              on_skip: Callable[[Case, str], None] | None = None) -> list[BenchRow]:
    """Measure each case; cases that cannot run here are reported to ``on_skip``."""
    rows = []
    for case in cases:
        try:
            warmup, iters = rounds(case, sizes)
            row = measure(prepare_case(case, cache), warmup=warmup, iters=iters)
        except BenchUnavailable as e:
            if on_skip is not None:
                on_skip(case, str(e))
            continue
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
