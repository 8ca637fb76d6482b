"""The server's screen of a round's uploads, before any aggregation (every method, every
engine): a hostile or broken client cannot poison the global model, and every rejection
is said (round, client, reason) in metrics.jsonl.

An upload is rejected when it

* does not decode (truncated, corrupted, wrong entry count or shape: the method's own
  decoder raises; a masked upload with values at pruned positions has the wrong count);
* holds a NaN or an infinity;
* is implausibly large: its norm (of the update, for methods that upload updates; of the
  state minus the current global model otherwise) exceeds ``max_norm_ratio`` times the
  median over the round's decodable, finite uploads (at least 3 of them).

Methods that do not expose :meth:`~psfl.methods.base.FederatedMethod.decode_upload` are
passed through unscreened.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from psfl.methods.base import FederatedMethod, Upload


@dataclass
class Rejected:
    cid: int
    reason: str


def upload_norm(decoded: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """L2 norm of ``decoded - reference`` over the floating-point entries (reference
    entries missing: zero)."""
    total = 0.0
    for k, v in decoded.items():
        if not v.is_floating_point():
            continue
        d = v.detach().double().cpu()
        if k in reference:
            d = d - reference[k].detach().double().cpu().view_as(d)
        total += float((d * d).sum())
    return math.sqrt(total)


def screen_uploads(method: FederatedMethod, uploads: list[Upload], max_norm_ratio: float
                   ) -> tuple[list[Upload], list[Rejected]]:
    """(accepted uploads in their order, rejections)."""
    decoded: dict[int, dict[str, torch.Tensor]] = {}
    rejected: list[Rejected] = []
    for u in uploads:
        try:
            d = method.decode_upload(u.payload)
        except Exception as e:  # any malformed payload: the method's decoder is the judge
            rejected.append(Rejected(u.cid, f"undecodable: {type(e).__name__}: {e}"[:300]))
            continue
        if d is None:
            continue
        bad = next((k for k, v in d.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            rejected.append(Rejected(u.cid, f"non-finite values in {bad}"))
            continue
        decoded[u.cid] = d
    if max_norm_ratio > 0 and len(decoded) >= 3:
        reference = {} if method.uploads_updates else method.global_model().state_dict()
        norms = {cid: upload_norm(d, reference) for cid, d in decoded.items()}
        med = float(torch.tensor(sorted(norms.values()), dtype=torch.float64).median())
        for cid, n in norms.items():
            if med > 0 and n > max_norm_ratio * med:
                rejected.append(Rejected(cid, f"norm {n:.4g} > {max_norm_ratio:g} x the round's median {med:.4g}"))
    out = {r.cid for r in rejected}
    return [u for u in uploads if u.cid not in out], sorted(rejected, key=lambda r: r.cid)
