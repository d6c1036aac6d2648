"""The records and summary of a text run (the files themselves are those of records.py).

A text record is ``TextResult.to_record()`` with ``path``, ``output`` and the load notes in
front (:func:`~advx.engine.folder.records.result_record`), plus whether each reading is the
truth under its solver's case rule: ``right_before`` {verifier: bool} for the clean captcha
(read under the verifier's own view only) and ``right_after`` {verifier: {view: bool}} as
delivered. The headline is computed from these records alone, so it can be recomputed from
results.jsonl.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...folder import records as rec

OWN_VIEW = "own"  # the view the clean captcha is read under (advx.engine.views.view.OWN)


def text_record(path: str, output: str, result, charsets: Mapping, notes: Sequence[str]
                ) -> dict:
    """The record of a hardened captcha (``result``: a TextResult; ``charsets``: verifier ->
    its Charset, whose ``same`` is the case rule)."""
    r = rec.result_record(path, output, result.to_record(), notes, truth="text")
    truth = result.text
    r["right_before"] = {v: charsets[v].same(s, truth) for v, s in result.read_before.items()}
    r["right_after"] = {v: {w: charsets[v].same(s, truth) for w, s in views.items()}
                        for v, views in result.read_after.items()}
    return r


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def text_headline(records: Sequence[dict]) -> dict[str, dict]:
    """Per verifier, over the hardened captchas: ``beaten_rate``, the share it misreads under
    all of its deciding views at once; its ``deciding`` and ``reported`` views; and per view
    ``read_clean_rate`` (the share it reads right clean: known for the own view only),
    ``fooled_rate`` (the share it misreads as delivered) and ``mean_cer``."""
    rows = [r for r in records if r.get("status") != "error"
            and isinstance(r.get("right_after"), dict)]
    verifiers = list(dict.fromkeys(v for r in rows for v in r["right_after"]))
    out: dict[str, dict] = {}
    for v in verifiers:
        mine = [r for r in rows if v in r["right_after"]]
        views = list(dict.fromkeys(w for r in mine for w in r["right_after"][v]))
        deciding = list(dict.fromkeys(w for r in mine for w in _deciding(r, v)))
        beaten = [not any(r["right_after"][v].get(w, True) for w in _deciding(r, v))
                  for r in mine]
        by_view = {}
        for w in views:
            seen = [r for r in mine if w in r["right_after"][v]]
            clean = [bool(r["right_before"][v]) for r in seen
                     if w == OWN_VIEW and v in (r.get("right_before") or {})]
            by_view[w] = {
                "read_clean_rate": _rate(clean) if w == OWN_VIEW else None,
                "fooled_rate": _rate([not r["right_after"][v][w] for r in seen]),
                "mean_cer": rec.finite_mean((r.get("cer_after") or {}).get(v, {}).get(w)
                                            for r in seen),
            }
        out[v] = {"beaten_rate": _rate(beaten), "deciding": deciding,
                  "reported": [w for w in views if w not in deciding], "views": by_view}
    return out


def _deciding(record: dict, verifier: str) -> list[str]:
    """The views that decide for ``verifier`` on this captcha (all of them when unrecorded)."""
    return (record.get("deciding") or {}).get(verifier) or list(record["right_after"][verifier])


def summarize_text(records: Sequence[dict], *, total: int) -> dict:
    """Counts, means and stop reasons as for images (records.summarize), with the text
    headline and the mean seconds a captcha spent in its batch."""
    s = rec.summarize(records, total=total)
    for key in ("per_model", "per_view"):  # the image figures: labels, margins, grids
        s.pop(key, None)
    hardened = [r for r in records if r.get("status") != "error"]
    s["headline"] = text_headline(hardened)
    s["min_ssim"] = (s.get("ssim_distribution") or {}).get("min")
    s["mean_seconds_in_batch"] = rec.finite_mean(r.get("seconds") for r in hardened)
    return s


__all__ = ["OWN_VIEW", "summarize_text", "text_headline", "text_record"]
