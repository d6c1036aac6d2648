"""The pytest-benchmark suite of advx. Not part of the test command (testpaths is tests/).

    pytest benchmarks --benchmark-json=benchmarks/results/throughput/throughput-cpu.json  # CPU
    pytest benchmarks --benchmark-json=throughput-gpu.json  # on a GPU (README: GPU run)

Each test module lists GPU_CASES and CPU_CASES (advx.bench.Case). On a machine with CUDA the
GPU cases run and the CPU-only ones are skipped; without CUDA the reverse, each skip with its
reason, so the IDs of what a run leaves out are in its report; so is a case whose packages are
missing. Every benchmark stores its figures (images/s, image-steps/s, share of the bf16 peak,
...) in ``extra_info`` of the JSON, and the session ends with the table that ``advx bench``
prints. The workloads and their timing are advx.bench's; this file only maps them onto
pytest-benchmark.
"""

from __future__ import annotations

import pytest
import torch

from advx import bench

CUDA = torch.cuda.is_available()
SIZES = bench.default_sizes("cuda" if CUDA else "cpu")
ROWS: list[bench.BenchRow] = []

SKIP_ON_GPU = "CPU matrix only: a GPU machine runs the GPU matrix instead"
SKIP_ON_CPU = "GPU matrix: needs CUDA (see benchmarks/README.md, GPU run)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    gpu, cpu = list(metafunc.module.GPU_CASES), list(metafunc.module.CPU_CASES)
    params = []
    for case in dict.fromkeys(gpu + cpu):  # ordered, without duplicates
        marks = []
        if CUDA and case not in gpu:
            marks = [pytest.mark.skip(reason=SKIP_ON_GPU)]
        elif not CUDA and case not in cpu:
            marks = [pytest.mark.skip(reason=SKIP_ON_CPU)]
        params.append(pytest.param(case, id=str(case), marks=marks))
    metafunc.parametrize("case", params)


@pytest.fixture(scope="session")
def cache():
    """Models, exports and sessions shared by all benchmarks of the session."""
    with bench.ModelCache() as c:
        yield c


@pytest.fixture
def run_case(benchmark, cache):
    """Prepare a case (untimed), warm it up, time it with benchmark.pedantic, record its row."""

    def run(case: bench.Case) -> bench.BenchRow | None:
        try:
            work = bench.prepare_case(case, cache)
        except bench.BenchUnavailable as e:
            pytest.skip(str(e))
        warmup, iters = bench.rounds(case, SIZES)
        for _ in range(warmup):
            work.run()
        benchmark.group = f"{case.name} {'+'.join(map(bench.short_name, case.models))} " \
                          f"b{case.batch} {case.device}"
        benchmark.pedantic(work.run, rounds=iters, iterations=1)
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
            return None
        row = work.row(benchmark.stats["median"], iters)
        benchmark.extra_info.update(row.to_dict())
        ROWS.append(row)
        return row

    return run


def pytest_terminal_summary(terminalreporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "advx bench figures (medians)")
        terminalreporter.write_line(bench.format_table(ROWS))
