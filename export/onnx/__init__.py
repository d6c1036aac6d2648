"""Registry classifiers as ONNX graphs, as the engine verifies with them: the export spec and
its errors (:mod:`.spec`), the export itself with its parity check (:mod:`.export`), the
manifest beside every graph (:mod:`.manifest`), the cache of exports that ``build_verifiers``
builds on demand (:mod:`.cache`), ONNX Runtime sessions (:mod:`.runtime`, also used by foreign
solvers) and the verifier that scores images with an export (:mod:`.verifier`).

Import from the submodules: this file imports none of them, so that a light one (``runtime``,
``spec``) loads without the others. The public names are re-exported by :mod:`advx.export`.
"""
