"""``seqtwins evaluate``: trained runs and the floors, evaluated on identical subsets.

Each run contributes its encoder's embedding of every user (the ``best`` checkpoint,
selected on valid users during pretraining, or with ``checkpoint="last"`` the last one).
A run whose objective has an item head (``dual``, ``barlow+next``, ``barlow+mask``) is also
scored natively on item rankings, as ``<name>:native`` (:mod:`seqtwins.evaluate.native`).
Floors beside them: the majority class (popularity on set tasks), the user's own history
(``history``, ``future_categories``), user-based collaborative filtering on raw item lists
(``items-knn``, ``future_items``), an encoder of the same configuration with untrained weights
(``random-init``) and TF-IDF + truncated SVD to the same dimension, on the whole history
(``tfidf-svd``) and on the encoder's window (``tfidf-svd-window``). With
``protocol="finetune"`` the frozen-embedding methods are probed linearly and every run is
also fine-tuned end to end (encoder + linear head, early stopping on valid users). With
``faithfulness=True`` each run's attributions also take the deletion test
(:mod:`seqtwins.evaluate.faithfulness`), recorded under the eval.json key ``faithfulness``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqtwins.data.batching import histories, pad_right
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.faithfulness import DEFAULT_USERS, FAITHFULNESS
from seqtwins.evaluate.protocol import (
    FLOOR_METHODS,
    ITEMS_KNN,
    PER_USER,
    RESULTS_SCHEMA,
    Scorer,
    evaluate_embeddings,
    save_results,
)
from seqtwins.evaluate.significance import save_per_user
from seqtwins.evaluate.tasks import Task
from seqtwins.files import (
    atomic_dir,
    check_replaceable,
    clean_stale,
    file_lock,
    write_marker,
)
from seqtwins.model_card import update_model_cards
from seqtwins.models.encoder import SequenceEncoder, build_encoder, embed_users
from seqtwins.run import Run, check_checkpoint

if TYPE_CHECKING:  # imported when asked for: explanations are an optional extra
    from seqtwins.explain.faithfulness import DeletionPlan

BASELINES = FLOOR_METHODS
"""The floors ``seqtwins evaluate`` can add beside the runs (all of them by default)."""
BARLOW_OBJECTIVES = ("barlow", "barlow+next", "barlow+mask")
"""Objectives whose model is a :class:`~seqtwins.objectives.barlow.BarlowObjective` (a
projector and a cross-correlation matrix to plot)."""
PROTOCOLS = ("linear", "mlp", "finetune")
ARTIFACTS_KIND = "eval-artifacts"


def is_eval_json(path: Path) -> bool:
    """True for a results file written by ``seqtwins evaluate`` (its ``schema`` key)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("schema") == RESULTS_SCHEMA


def artifacts_folder(out: Path) -> Path:
    """The folder of arrays beside an eval.json: ``<stem>_artifacts``."""
    return out.parent / f"{out.stem}_artifacts"


def per_user_file(out: Path) -> Path:
    """The per-user values of an eval.json's runs (:mod:`seqtwins.evaluate.significance`)."""
    return artifacts_folder(out) / "per_user.npz"


def _legacy_artifacts(folder: Path) -> bool:
    """An artifacts folder written before ownership markers: only the arrays evaluate
    writes (``cross_correlation.npy``, ``map_*.npy``)."""
    return folder.is_dir() and all(
        p.is_file() and (p.name == "cross_correlation.npy" or p.match("map_*.npy"))
        for p in folder.iterdir()
    )


def check_outputs(out: Path) -> None:
    """Refuse an ``out`` (or its artifacts folder) that seqtwins did not write."""
    if out.is_dir():
        raise SeqtwinsError(f"--out {out} is a folder; give the path of a .json file")
    check_replaceable(out, "--out", owned=is_eval_json)
    check_replaceable(artifacts_folder(out), "the artifacts folder", owned=_legacy_artifacts,
                      kinds=(ARTIFACTS_KIND,))  # fmt: skip


def method_names(run_dirs: Sequence[Path], objectives: Sequence[str]) -> list[str]:
    """A run is named by its objective, or by its directory when objectives repeat."""
    if len(set(objectives)) == len(objectives):
        return list(objectives)
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) != len(names):
        raise SeqtwinsError("runs share an objective and a directory name; rename one")
    return names


def evaluate_runs(
    run_dirs: Sequence[Path | str],
    data_dir: Path | str,
    out: Path | str,
    tasks: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 1.0),
    seeds: int = 3,
    protocol: str = "linear",
    baselines: Sequence[str] = BASELINES,
    progress: bool = True,
    finetune_fractions: Sequence[float] | None = None,
    verify: bool = True,
    checkpoint: str = "best",
    faithfulness: bool = False,
    faithfulness_users: int = DEFAULT_USERS,
) -> dict[str, Any]:
    """Evaluate runs and floors on ``data_dir``; write ``out`` (eval.json) and its
    artifacts (``<out stem>_artifacts/*.npy`` and the per-user values ``per_user.npz``)
    and return the results. ``verify=False`` skips recomputing the dataset's content hash
    (``--no-verify``); ``checkpoint`` is the checkpoint of every run that is evaluated
    (``best`` or ``last``, recorded in the results). ``faithfulness`` adds the deletion
    test of every run's attributions over up to ``faithfulness_users`` test users
    (:mod:`seqtwins.evaluate.faithfulness`; needs Captum)."""
    if protocol not in PROTOCOLS:
        raise SeqtwinsError(f"--protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    check_checkpoint(checkpoint)
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise SeqtwinsError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    out = Path(out)
    check_outputs(out)
    ds = SequenceDataset.open(data_dir, verify=verify)
    runs = [Run.open(r) for r in run_dirs]
    for run in runs:
        if not run.has_checkpoint(checkpoint):
            raise SeqtwinsError(
                f"--checkpoint {checkpoint}: {run.path} has no {checkpoint} checkpoint "
                f"(checkpoints/{checkpoint}); train it with seqtwins pretrain"
            )
    encoders = [run.encoder(checkpoint, ds) for run in runs]
    objectives = [run.config.objective for run in runs]
    deletion = None
    if faithfulness:
        from seqtwins.explain.faithfulness import plan_deletion_test

        deletion = plan_deletion_test(ds, encoders, faithfulness_users)
    with file_lock(out):
        check_outputs(out)  # again, now that no other seqtwins process writes it
        results = _evaluate(runs, encoders, objectives, ds, out, tasks, fractions, seeds,
                            protocol, baselines, progress, finetune_fractions,
                            checkpoint, deletion)  # fmt: skip
    update_model_cards(out, ds.path)  # each run's model_card.md gets these metrics
    return results


def _evaluate(
    runs: list[Run],
    encoders: list[SequenceEncoder],
    objectives: list[str],
    ds: SequenceDataset,
    out: Path,
    tasks: Sequence[str] | None,
    fractions: Sequence[float],
    seeds: int,
    protocol: str,
    baselines: Sequence[str],
    progress: bool,
    finetune_fractions: Sequence[float] | None,
    checkpoint: str = "best",
    deletion: DeletionPlan | None = None,
) -> dict[str, Any]:
    run_dirs = [run.path for run in runs]
    names = method_names([Path(r) for r in run_dirs], objectives)
    say: Callable[[str], None] = print if progress else (lambda _m: None)

    all_users = np.arange(ds.num_users)
    methods: dict[str, np.ndarray] = {}
    for name, encoder in zip(names, encoders, strict=True):
        say(f"embedding users with {name}")
        methods[name] = embed_users(encoder, ds, all_users)
    dim = encoders[0].cfg.dim if encoders else 64
    if "random-init" in baselines:
        if not encoders:
            raise SeqtwinsError("the random-init floor needs a run to copy its encoder config")
        torch.manual_seed(0)
        random_encoder = build_encoder(encoders[0].cfg, ds)
        methods["random-init"] = embed_users(random_encoder, ds, all_users)
    _tfidf_floors(ds, encoders, baselines, dim, methods)

    probe_protocol = "linear" if protocol == "finetune" else protocol
    results = evaluate_embeddings(
        ds, methods, tasks=tasks, fractions=fractions, seeds=seeds, protocol=probe_protocol,
        include_majority="majority" in baselines, progress=say,
        scorers=native_scorers(runs, names, ds, methods, checkpoint),
        include_history="history" in baselines, include_items_knn=ITEMS_KNN in baselines,
    )  # fmt: skip
    if protocol == "finetune":
        ft_fracs = list(finetune_fractions or [min(fractions)])
        hooks: dict[str, Finetuner] = {
            f"{name}+finetune": Finetuner(encoder, ds)
            for name, encoder in zip(names, encoders, strict=True)
        }
        ft = evaluate_embeddings(
            ds, {}, tasks=tasks, fractions=ft_fracs, seeds=seeds, protocol="linear",
            finetuners=hooks, include_majority=False, progress=say, include_history=False,
            include_items_knn=False,
        )  # fmt: skip
        results["cells"].extend(ft["cells"])
        results["methods"].extend(ft["methods"])
        results["seconds"].update({k: v for k, v in ft["seconds"].items() if k != "total"})
        for task, entry in ft[PER_USER].items():
            results[PER_USER].setdefault(task, {"users": entry["users"], "values": {}})
            results[PER_USER][task]["values"].update(entry["values"])
    if deletion is not None:
        from seqtwins.explain.faithfulness import run_deletion_test

        by_name = dict(zip(names, encoders, strict=True))
        results[FAITHFULNESS] = run_deletion_test(deletion, ds, by_name, methods, say)
    results["runs"] = {n: str(Path(r)) for n, r in zip(names, run_dirs, strict=True)}
    results["checkpoint"] = checkpoint
    clean_stale(out)
    clean_stale(artifacts_folder(out))
    with atomic_dir(artifacts_folder(out), overwrite=True) as folder:
        write_marker(folder, ARTIFACTS_KIND)
        results["artifacts"] = _artifacts(ds, out, folder, runs, names, objectives, methods,
                                          checkpoint)  # fmt: skip
        save_per_user(results[PER_USER], folder / per_user_file(out).name)
        results["artifacts"][PER_USER] = {
            "path": str(per_user_file(out).relative_to(out.parent)),
            "keys": "<task>/users, <task>/<method>|<fraction:g>|<seed>",
        }
    save_results(results, out)
    return results


def _tfidf_floors(
    ds: SequenceDataset,
    encoders: Sequence[SequenceEncoder],
    baselines: Sequence[str],
    dim: int,
    methods: dict[str, np.ndarray],
) -> None:
    """Add the TF-IDF + SVD floors asked for to ``methods``: ``tfidf-svd`` on the whole
    history, ``tfidf-svd-window`` on the first run's encoder window (``encoder.max_len``)."""
    from seqtwins.evaluate.baselines import TFIDF_SVD, TFIDF_SVD_WINDOW, tfidf_svd_embeddings

    dim = min(dim, ds.num_items - 1)
    if TFIDF_SVD in baselines:
        methods[TFIDF_SVD] = tfidf_svd_embeddings(ds, dim=dim)
    if TFIDF_SVD_WINDOW in baselines:
        if not encoders:
            raise SeqtwinsError("the tfidf-svd-window floor needs a run to copy encoder.max_len")
        methods[TFIDF_SVD_WINDOW] = tfidf_svd_embeddings(
            ds, dim=dim, max_len=encoders[0].cfg.max_len
        )


def native_scorers(
    runs: Sequence[Run],
    names: Sequence[str],
    ds: SequenceDataset,
    methods: Mapping[str, np.ndarray],
    checkpoint: str = "best",
) -> dict[str, Scorer]:
    """``{"<name>:native": scorer}`` for every run whose objective has an item tower
    (:data:`~seqtwins.evaluate.native.NATIVE_OBJECTIVES`), from checkpoint ``checkpoint``;
    ``methods[name]`` holds that checkpoint's user embeddings
    (:func:`seqtwins.evaluate.native.native_scorer`)."""
    from seqtwins.evaluate.native import (
        NATIVE_OBJECTIVES,
        NATIVE_SUFFIX,
        has_item_tower,
        native_scorer,
    )

    scorers: dict[str, Scorer] = {}
    for run, name in zip(runs, names, strict=True):
        if run.config.objective not in NATIVE_OBJECTIVES:
            continue  # no item tower: its objective is not loaded
        model = run.objective(checkpoint, ds)
        if has_item_tower(model):
            scorers[name + NATIVE_SUFFIX] = native_scorer(model, methods[name])
    return scorers


def _artifacts(
    ds: SequenceDataset,
    out: Path,
    folder: Path,
    runs: Sequence[Run],
    names: list[str],
    objectives: list[str],
    methods: dict[str, np.ndarray],
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Arrays the report plots, saved beside eval.json (paths relative to its folder): the
    cross-correlation matrix of the first Barlow run (any of :data:`BARLOW_OBJECTIVES`) on
    valid users, and test users' embeddings with their favourite category for a 2-D map.
    ``folder`` is where they are written now (it becomes :func:`artifacts_folder`)."""
    final = artifacts_folder(out)
    rel = lambda file: str((final / file).relative_to(out.parent))  # noqa: E731
    arts: dict[str, Any] = {}
    barlow = [i for i, o in enumerate(objectives) if o in BARLOW_OBJECTIVES]
    if barlow:
        i = barlow[0]
        matrix = valid_cross_correlation(ds, runs[i], which=checkpoint)
        np.save(folder / "cross_correlation.npy", matrix)
        arts["cross_correlation"] = {"method": names[i], "path": rel("cross_correlation.npy")}
    if ds.has_categories:
        from seqtwins.evaluate.tasks import build_task

        task = build_task(ds, "favorite_category")
        test = task.labelled(ds.split_users("test"))
        maps = {}
        for name in [*names, "tfidf-svd"]:
            if name in methods:
                file = f"map_{name.replace('+', '_')}.npy"
                np.save(folder / file, methods[name][test].astype(np.float32))
                maps[name] = rel(file)
        np.save(folder / "map_labels.npy", task.labels[test])
        arts["embedding_map"] = {
            "task": "favorite_category", "embeddings": maps, "labels": rel("map_labels.npy"),
            "class_names": task.class_names,
        }  # fmt: skip
    return arts


@torch.no_grad()
def valid_cross_correlation(
    ds: SequenceDataset, run: Run | Path | str, max_users: int = 2048, which: str = "best"
) -> np.ndarray:
    """(K, K) cross-correlation of the two augmented views' projections on valid users,
    from the run's checkpoint ``which`` (projector included), in eval mode with fixed
    views."""
    from seqtwins.augment import TwoViewTransform
    from seqtwins.data.batching import collate
    from seqtwins.objectives.barlow import BarlowObjective

    run = run if isinstance(run, Run) else Run.open(run)
    cfg = run.config
    model = run.objective(which, ds)
    barlow = model if isinstance(model, BarlowObjective) else model.barlow
    assert isinstance(barlow, BarlowObjective)
    train = ds.split_users("train")
    transform = TwoViewTransform.from_sequences(cfg.augment, ds.sequences, train, ds.num_items)
    users = ds.split_users("valid")[:max_users]
    batch = collate(
        histories(ds.sequences, users), "barlow", cfg.encoder.max_len, np.random.default_rng(0),
        transform,
    )  # fmt: skip
    return barlow.cross_correlation(batch).float().cpu().numpy()


class Finetuner:
    """End-to-end fine-tuning of a pretrained encoder plus a linear head on one cell.

    A fresh copy of the encoder per call; AdamW (encoder lr 1e-4, head lr 1e-3), up to
    ``max_epochs`` epochs with early stopping on the valid users' primary metric (checked
    every epoch, patience 3); the best state scores the test users once.
    """

    def __init__(
        self,
        encoder: SequenceEncoder,
        ds: SequenceDataset,
        max_epochs: int = 30,
        batch_size: int = 128,
        patience: int = 3,
    ) -> None:
        self.encoder, self.ds = encoder, ds
        self.max_epochs, self.batch_size, self.patience = max_epochs, batch_size, patience

    def _items(self, users: np.ndarray) -> torch.Tensor:
        return pad_right(histories(self.ds.sequences, users, self.encoder.cfg.max_len))

    @torch.no_grad()
    def _scores(self, enc: SequenceEncoder, head: torch.nn.Linear, users: np.ndarray) -> np.ndarray:
        enc.eval()
        out = []
        for start in range(0, len(users), 1024):
            out.append(head(enc.embed(self._items(users[start : start + 1024]))).numpy())
        enc.train()
        return np.concatenate(out) if out else np.zeros((0, head.out_features), np.float32)

    def __call__(
        self,
        task: Task,
        train_users: np.ndarray,
        valid_users: np.ndarray,
        test_users: np.ndarray,
        seed: int,
    ) -> np.ndarray:
        from seqtwins.evaluate.probe import Prediction, score

        torch.manual_seed(seed)
        enc = copy.deepcopy(self.encoder).train()
        head = torch.nn.Linear(enc.cfg.dim, task.num_classes)
        opt = torch.optim.AdamW(
            [{"params": enc.parameters(), "lr": 1e-4}, {"params": head.parameters(), "lr": 1e-3}],
            weight_decay=0.01,
        )
        y = torch.from_numpy(task.labels[train_users].astype(np.int64))
        rng = np.random.default_rng(seed)
        best, best_state, bad = -np.inf, None, 0
        for _ in range(self.max_epochs):
            order = rng.permutation(len(train_users))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                logits = head(enc.embed(self._items(train_users[idx])))  # (B, C)
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            pred = Prediction.full(self._scores(enc, head, valid_users))
            value = score(pred, task.labels[valid_users], (task.primary_metric,))[
                task.primary_metric
            ]
            value = -np.inf if value is None else value
            if value > best:
                best, bad = value, 0
                best_state = (copy.deepcopy(enc.state_dict()), copy.deepcopy(head.state_dict()))
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            enc.load_state_dict(best_state[0])
            head.load_state_dict(best_state[1])
        return self._scores(enc, head, test_users)
