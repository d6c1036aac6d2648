"""``advx adapt``: how long hardening holds once a solver is retrained on hardened images.

The check takes an advx run (hardened items, their truths and originals) and one of its
solvers. It keeps whole sources out of training (:mod:`.split`), fine-tunes a copy of the
solver on N hardened training items as its operator would (:mod:`.train`: the task's loss
through :meth:`~advx.engine.tasks.base.Task.trainee`), and after each epoch reads the held-out
items, hardened and clean, under every view of the run, through the retrained copy written
back as a solver spec (so it loads as a surrogate or verifier too). The counter-moves: fresh
perturbations (the held-out originals hardened again with another seed, as per-request
hardening delivers them) and a second round (hardened with the largest retrained copy among
the surrogates and verifiers, then read by it and by a copy retrained apart with another
seed). Everything lands in the output folder as it finishes; a rerun goes on from there.
"""

from .run import RESULT, AdaptConfig, adapt_run

__all__ = ["RESULT", "AdaptConfig", "adapt_run"]
