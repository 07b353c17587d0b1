"""The public Python API, re-exported by ``import seqtwins``; the CLI commands are thin
wrappers over the same functions.

    import seqtwins

    seqtwins.synth("data/demo", users=2000, items=800)
    summary = seqtwins.pretrain("data/demo", "runs/barlow", overrides=["train.epochs=3"])
    vectors = seqtwins.Run.open("runs/barlow").embed([["i0001", "i0042"], ["i0007"]])
    results = seqtwins.evaluate(["runs/barlow"], "data/demo", "eval.json")

:func:`pretrain` is :func:`seqtwins.train.pretrain` with the validation proxy the CLI uses
(:func:`seqtwins.evaluate.proxy.headline_proxy`: probes of the headline tasks on valid
users, relative to the popularity floor; minus the validation loss where none applies).

Every function raises :class:`~seqtwins.errors.SeqtwinsError` with one line on bad input
and leaves nothing half-written. Settings are named as on the command line: ``--set``
keys (``train.epochs=3``) for :func:`pretrain`, option names (``min_user_count=5``) for
:func:`prepare` and :func:`synth`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seqtwins.config import PretrainConfig, build, load_yaml, to_dict
from seqtwins.data.options import PrepareSummary
from seqtwins.embed import EmbedSummary
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.proxy import headline_proxy
from seqtwins.evaluate.runs import evaluate_runs as evaluate
from seqtwins.incremental.config import IncrementalConfig
from seqtwins.run import Run
from seqtwins.train import RunSummary
from seqtwins.train import pretrain as train_pretrain

__all__ = [
    "Run",
    "RunSummary",
    "embed",
    "evaluate",
    "prepare",
    "pretrain",
    "pretrain_config",
    "report",
    "synth",
]
PathLike = Path | str


def synth(out: PathLike, *, overwrite: bool = False, **settings: Any) -> Path:
    """Write the embedded synthetic dataset (``seqtwins synth``) to ``out``; ``settings``
    are :class:`~seqtwins.data.synth.SynthConfig` fields (``users``, ``items``, ``seed``,
    ...)."""
    from seqtwins.data.synth import SynthConfig, synthesize

    return synthesize(out, build(SynthConfig, settings), overwrite=overwrite)


def prepare(
    input: PathLike,
    out: PathLike,
    *,
    config: Iterable[PathLike] = (),
    overrides: Iterable[str] = (),
    **settings: Any,
) -> PrepareSummary:
    """Turn a raw log (a file, a Parquet folder, a MovieLens or S3-Rec folder) into a
    dataset folder (``seqtwins prepare``). ``settings`` are the command's option names
    (``format``, ``user_col``, ``min_user_count``, ``overwrite``, ...), applied after the
    YAML files in ``config`` and before ``overrides`` (``key=value``)."""
    from seqtwins.data.options import build_options
    from seqtwins.data.prepare import prepare as run_prepare

    layers = [load_yaml(p) for p in config]
    return run_prepare(input, out, build_options(*layers, settings, overrides=overrides))


def pretrain_config(
    config: Iterable[PathLike | Mapping[str, Any]] = (),
    overrides: Iterable[str] = (),
    objective: str | None = None,
) -> PretrainConfig:
    """A :class:`~seqtwins.config.PretrainConfig` from YAML files or mappings (applied in
    order), ``objective`` and ``key=value`` overrides: what ``--config``, ``--objective``
    and ``--set`` of ``seqtwins pretrain`` build."""
    layers = [dict(c) if isinstance(c, Mapping) else load_yaml(c) for c in config]
    if objective is not None:
        layers.append({"objective": objective})
    return build(PretrainConfig, *layers, overrides=overrides)


def pretrain(
    data_dir: PathLike,
    run_dir: PathLike,
    cfg: PretrainConfig | None = None,
    *,
    objective: str | None = None,
    config: Iterable[PathLike | Mapping[str, Any]] = (),
    overrides: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    verify: bool = True,
    init: PathLike | None = None,
    incremental: Mapping[str, Any] | Iterable[str] = (),
) -> RunSummary:
    """Pretrain an encoder on ``data_dir`` into the run folder ``run_dir``, selecting the
    best epoch on valid users as ``seqtwins pretrain`` does; open the result with
    ``Run.open(run_dir)``. The config is ``cfg``, or built from ``config``, ``objective``
    and ``overrides`` (:func:`pretrain_config`); with ``resume`` give none of them (the
    run's saved config is used). See :func:`seqtwins.train.pretrain` for the rest.

    ``init`` (an earlier run) makes this an incremental update (docs/incremental.md): the
    config then starts from the old run's, and ``incremental`` holds the settings of
    :class:`~seqtwins.incremental.IncrementalConfig` (a mapping, or ``key=value`` texts)."""
    config, overrides = list(config), list(overrides)
    if cfg is not None and (config or overrides or objective):
        raise SeqtwinsError("give either cfg or config/overrides/objective, not both")
    inc = None
    if init is not None:
        if resume:
            raise SeqtwinsError(
                "--resume continues an update with its recorded --init; drop --init"
            )
        inc = incremental_config(incremental)
        config = [to_dict(Run.open(init).config), *config]  # an update keeps the old config
    if cfg is None and (not resume or config or overrides or objective):
        cfg = pretrain_config(config, overrides, objective)
    return train_pretrain(data_dir, run_dir, cfg, resume=resume, progress=progress,
                          overwrite=overwrite, on_epoch=on_epoch, proxy=headline_proxy,
                          verify=verify, init=init, incremental=inc)  # fmt: skip


def incremental_config(settings: Mapping[str, Any] | Iterable[str] = ()) -> IncrementalConfig:
    """:class:`~seqtwins.incremental.IncrementalConfig` from a mapping or ``key=value``
    texts (``strategy=replay``); a bad value is one line naming ``incremental.<key>``."""
    if isinstance(settings, Mapping):
        return build(IncrementalConfig, settings, prefix="incremental")
    return build(IncrementalConfig, overrides=list(settings), prefix="incremental")


def embed(
    run: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    sequences: PathLike | None = None,
    which: str = "best",
    shard: tuple[int, int] = (0, 1),
    verify: bool = True,
) -> EmbedSummary:
    """Write the embeddings of every user of ``data`` (or of the sequences in the CSV /
    JSON-lines file ``sequences``) to the Parquet file ``out`` (``seqtwins embed``). For
    embeddings in memory use :meth:`seqtwins.run.Run.embed`."""
    from seqtwins.embed import export_embeddings

    return export_embeddings(run, data, out, sequences_file=sequences, which=which,
                             shard=shard, verify=verify)  # fmt: skip


def report(evals: Sequence[PathLike], out: PathLike) -> Path:
    """Write ``report.md`` and its plots for eval.json files into ``out``
    (``seqtwins report``); returns the path of report.md."""
    from seqtwins.evaluate.report import write_report

    return write_report(evals, out)
