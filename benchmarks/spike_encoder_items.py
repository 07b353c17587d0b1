"""Spike (issue 11): can any encoder rank items with no labels, items as one-item sequences?

``dual`` (and ``barlow+next``) rank items natively through a trained item tower. A Barlow
Twins encoder has no item tower, but it can embed an item the way it embeds a user: as a
sequence of one item. Barlow Twins is trained to map crops of a history near the whole
history, so a user's embedding might sit near the embeddings of the items it will take.
This scores ``future_items`` on **valid users only**, with no labels, three ways per run:

* ``cos``: cosine between the user embedding and each item's one-item-sequence embedding;
* ``cos_centered``: the same after subtracting the mean train-user embedding from the users
  and the mean item embedding from the items (removes a shared direction);
* ``table``: cosine between the user embedding and the encoder's input item table (the
  tied embedding; only where its width is the embedding's);

beside the run's own item tower (``native``, where it has one) and the ``items-knn`` floor,
with the protocol's metrics and history exclusion.

    python benchmarks/spike_encoder_items.py out/evidence/beauty \\
        --runs barlow dual barlow+next barlow+mask
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.baselines import items_knn_scorer
from seqtwins.evaluate.native import NATIVE_OBJECTIVES, native_scorer
from seqtwins.evaluate.probe import Prediction, cpu_threads, score
from seqtwins.evaluate.tasks import FUTURE_ITEMS, build_task
from seqtwins.models.encoder import embed_item_lists, embed_users
from seqtwins.run import Run

RESULTS = Path(__file__).resolve().parent / "results"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="an evidence folder: data/ and runs/<name>/")
    ap.add_argument("--runs", nargs="+", default=["barlow", "dual", "barlow+next", "barlow+mask"])
    args = ap.parse_args()
    ds = SequenceDataset.open(args.root / "data", verify=False)
    task = build_task(ds, FUTURE_ITEMS)
    valid = task.labelled(ds.split_users("valid"))
    classes = np.arange(ds.num_items, dtype=np.int64)

    def metrics(pred: Prediction | None) -> dict[str, float]:
        assert pred is not None  # both scorers answer future_items
        with cpu_threads(1):
            got = score(pred, task.targets[valid], task.metrics, task.exclude[valid])
        return {k: round(float(v), 4) for k, v in got.items()}

    def cosine(u: np.ndarray, items: np.ndarray) -> Prediction:
        return Prediction((unit(u) @ unit(items).T).astype(np.float32), classes)

    out: dict[str, object] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info("torch"),
        "data": str(args.root / "data"),
        "valid_users": int(len(valid)),
        "items-knn": metrics(items_knn_scorer(ds)(task, valid)),
    }
    one_item = [np.array([j]) for j in range(1, ds.num_items + 1)]
    for name in args.runs:
        run = Run.open(args.root / "runs" / name)
        enc = run.encoder("best", ds)
        users = embed_users(enc, ds, valid)
        items = embed_item_lists(enc, one_item)
        centre = embed_users(enc, ds, ds.split_users("train")).mean(0)
        row = {"cos": metrics(cosine(users, items)),
               "cos_centered": metrics(cosine(users - centre, items - items.mean(0)))}  # fmt: skip
        with torch.no_grad():
            table = enc.item_vectors(torch.arange(1, ds.num_items + 1)).float().numpy()
        if table.shape[1] == users.shape[1]:
            row["table"] = metrics(cosine(users, table))
        if run.config.objective in NATIVE_OBJECTIVES:
            every = np.zeros((ds.num_users, users.shape[1]), dtype=np.float32)
            every[valid] = users  # the scorer reads the valid users' rows only
            row["native"] = metrics(native_scorer(run.objective("best", ds), every)(task, valid))
        out[name] = row
        print(name, row, flush=True)
    path = RESULTS / f"spike_encoder_items-{args.root.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
