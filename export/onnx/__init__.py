"""Registry classifiers as ONNX graphs: the export spec and its errors (:mod:`.spec`), the export
with its parity check (:mod:`.export`), its manifest (:mod:`.manifest`), the export cache
(:mod:`.cache`), ONNX Runtime sessions (:mod:`.runtime`, also used by foreign solvers) and the
verifier (:mod:`.verifier`). This file imports none of them, so that a light one loads alone;
:mod:`advx.export` re-exports the public names."""
