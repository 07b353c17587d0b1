"""Spike (issue 11): can ``barlow+mask`` rank items natively, like ``dual`` does?

``barlow+mask`` trains a BERT4Rec-style head (``MaskedItemHead``: transform of a token
state, dot products with the encoder's own item table) beside Barlow Twins. ``dual`` is
scored on ``future_items`` natively, through its item tower, and beats every probed
embedding there (docs/evidence.md). This scores the masked-item head natively too, with no
labels, on **valid users only**, two ways:

* ``barlow+mask:native``: the user embedding (the pooled states of the plain history)
  through the same head, as ``seqtwins evaluate`` scores it
  (:func:`seqtwins.evaluate.native.native_scorer`);
* ``MASK appended``: BERT4Rec's inference, the user's last ``max_len - 1`` history items
  followed by a MASK token; the head's scores at the MASK position;

beside ``dual:native``, with the protocol's metrics and history exclusion
(:func:`seqtwins.evaluate.probe.score`). On the runs of ``make evidence``:

    python benchmarks/spike_mask_native.py out/evidence/yelp/data \\
        out/evidence/yelp/runs/dual out/evidence/yelp/runs/barlow+mask
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqtwins.data.batching import iter_history_batches
from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.native import ItemTower, native_scorer
from seqtwins.evaluate.probe import Prediction, cpu_threads, score
from seqtwins.evaluate.tasks import FUTURE_ITEMS, build_task
from seqtwins.models.encoder import PAD, embed_users
from seqtwins.run import Run


@torch.no_grad()
def mask_appended_scores(
    model: torch.nn.Module, ds: SequenceDataset, users: np.ndarray
) -> np.ndarray:
    """(users, items) scores of a ``barlow+mask`` model's masked-item head at a MASK token
    appended to each user's last ``max_len - 1`` history items (BERT4Rec's inference)."""
    enc, tower = model.encoder, ItemTower(model)  # the head's transform and item table
    mask_id = enc.vocab_size - 1
    out = np.empty((len(users), ds.num_items), np.float32)
    pos = 0
    for chunk, items in iter_history_batches(ds.sequences, users, enc.cfg.max_len - 1, 512):
        rows = torch.arange(len(items))
        lens = (items != PAD).sum(1)
        x = F.pad(items, (0, 1), value=PAD)
        x[rows, lens] = mask_id  # right after the last real item
        where = torch.zeros_like(x, dtype=torch.bool)
        where[rows, lens] = True
        _, states = enc.embed_with_states(x, where)  # (B, D), one state per row
        out[pos : pos + len(chunk)] = tower.logits(states).numpy()
        pos += len(chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("dual", type=Path, help="a dual run")
    ap.add_argument("mask", type=Path, help="a barlow+mask run")
    ap.add_argument("--checkpoint", default="best")
    args = ap.parse_args()
    ds = SequenceDataset.open(args.data)
    task = build_task(ds, FUTURE_ITEMS)
    valid = task.labelled(ds.split_users("valid"))
    classes = np.arange(ds.num_items, dtype=np.int64)

    def metrics(pred: Prediction) -> dict[str, float]:
        with cpu_threads(1):
            got = score(pred, task.targets[valid], task.metrics, task.exclude[valid])
        return {k: round(float(v), 4) for k, v in got.items()}

    result: dict[str, object] = {"valid users": int(len(valid))}
    for name, path in (("dual", args.dual), ("barlow+mask", args.mask)):
        model = Run.open(path).objective(args.checkpoint, ds).eval()
        emb = embed_users(model.encoder, ds, np.arange(ds.num_users))
        result[f"{name}:native"] = metrics(native_scorer(model, emb)(task, valid))
    scores = mask_appended_scores(model, ds, valid)
    result["barlow+mask, MASK appended"] = metrics(Prediction(scores, classes))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
