"""Registry classifiers as ONNX graphs: spec, export with parity, manifest, cache, sessions and
verifier. This file imports none of them; :mod:`advx.export` re-exports the public names."""
