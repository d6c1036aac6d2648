"""The ``advx`` command line.

The commands import the engine's models, images and folder runs inside their functions: at
import the CLI loads only click, numpy and the engine's torch-free declarations (defaults,
presets, config, errors) its options name, so ``advx --help`` is fast and never imports torch
(checked by tests/test_cli.py)."""

from __future__ import annotations

import click

from .. import __version__
from .adapt import adapt_cmd
from .bench import bench_cmd
from .demo import demo_cmd
from .evaluate import eval_cmd
from .harden import harden_cmd
from .models import export_cmd, models_cmd
from .serve import serve_cmd
from .solver import solver_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="advx")
def cli() -> None:
    """advx hardens image-CAPTCHA tiles against AI solvers.

    It adds small adversarial perturbations (an L-inf budget of a few /255) so that
    solvers (CAPTCHA-trained ONNX networks, CLIP zero-shot models, ImageNet networks) get
    the answer wrong while people still see the object. Perturbations are computed on
    surrogate models and kept only once verifier models, run as ONNX like a solver runs
    them, are fooled too, after the transforms a solver may apply (JPEG re-encoding,
    resizing, cropping, blur).

    \b
    Commands:
      harden   perturb a labelled folder of tiles, or of text captchas with --task text
               (resumable; writes a report)
      eval     how often models solve a set of tiles and 3x3 grid challenges
               (--task text: OCR read, error and fooled rates of text captchas)
      export   export a model to validated ONNX (fp32 / fp16)
      models   list the registered models and the model name grammar
      solver   bring a foreign CAPTCHA solver (ONNX) in: write and check its spec
      serve    harden over HTTP (FastAPI): concurrent requests hardened together
      demo     harden sample photos that ship with scikit-image (a quick tour;
               --task text: drawn text captchas)
      bench    measure throughput
      adapt    how long hardening holds once a solver is retrained on hardened items

    \b
    Example:
      advx demo                                   # 1-2 minutes on 2 CPU cores
      advx harden tiles/ --out hardened/          # tiles/<label>/<image>
      advx solver init solver.onnx --out solver.json
      advx harden tiles/ --out hardened/ --eps 4 \\
          --surrogates onnx:solver.json --verifiers onnx:solver.json
      advx eval hardened/ --models effnet-lite2,effnet-lite0

    Run `advx COMMAND --help` for a command's options.
    """


cli.add_command(harden_cmd)
cli.add_command(eval_cmd)
cli.add_command(export_cmd)
cli.add_command(models_cmd)
cli.add_command(solver_cmd)
cli.add_command(serve_cmd)
cli.add_command(demo_cmd)
cli.add_command(bench_cmd)
cli.add_command(adapt_cmd)


if __name__ == "__main__":
    cli()
