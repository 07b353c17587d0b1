"""The command-line interface. Thin: each command parses, calls one library function, prints.

Every command turns bad input into one line on stderr and exit code 2, no traceback:
a :class:`~seqtwins.errors.SeqtwinsError`, and (in :func:`user_error`, the one place
that does so) the operating system's and the data readers' errors: a read-only folder,
an ``--out`` that is a file, a file that is not UTF-8, a table Polars or Arrow cannot read.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from seqtwins.errors import SeqtwinsError

if TYPE_CHECKING:
    from seqtwins.data.options import PrepareOptions

Verify = Annotated[
    bool,
    typer.Option(
        help="Recompute the dataset's content hash (--no-verify skips this pass over the "
        "arrays, for very large data you trust)."
    ),
]
"""``--verify/--no-verify`` of every command that opens a dataset."""

app = typer.Typer(
    name="seqtwins",
    help="Barlow Twins self-supervised user representations from behaviour logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def user_error(e: BaseException) -> str | None:
    """The one line for an error caused by the user's files or settings, or None for a bug
    (which keeps its traceback)."""
    if isinstance(e, SeqtwinsError):
        return str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        also = f" -> {e.filename2}" if e.filename2 is not None else ""
        reason = e.strerror or e.__class__.__name__
        return f"{where}{reason}{also}; check the path and its permissions"
    # torch reports a failed CPU allocation as a RuntimeError (CUDA: OutOfMemoryError)
    oom = isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    if isinstance(e, MemoryError) or oom or type(e).__name__ == "OutOfMemoryError":
        return (
            "out of memory; use a smaller input or settings (prepare: --memory-budget, "
            "pretrain: a smaller train.batch_size or encoder)"
        )
    if isinstance(e, UnicodeError):
        return f"a file is not valid UTF-8 text ({e}); convert it to UTF-8"
    module = type(e).__module__.split(".")[0]
    if module in ("polars", "pyarrow") and not isinstance(e, TypeError | AttributeError):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot read the data: {first}"
    return None


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` that reports bad input (:func:`user_error`) as one line, exit 2."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except Exception as e:
                message = user_error(e)
                if message is None:
                    raise
                raise fail(message) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(code=130) from None

        app.command(*args, **kwargs)(wrapper)
        return fn

    return decorate


@contextmanager
def collected_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the library's warnings (e.g. a clipped batch size) to print them as lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)


# --- commands ---------------------------------------------------------------------------


@command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="A dataset directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    verify: Verify = True,
) -> None:
    """Counts, sequence lengths, categories, splits and fields of a dataset directory."""
    from seqtwins.data.inspect import inspect_dataset, render_summary

    summary = inspect_dataset(directory, verify=verify)
    if as_json:
        import json

        typer.echo(json.dumps(summary, indent=2))
    else:
        render_summary(summary, console)


@command()
def pretrain(
    data: Annotated[Path, typer.Argument(help="A dataset directory (prepare / synth).")],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write.")],
    objective: Annotated[
        str | None, typer.Option(help="barlow, dual, barlow+next or barlow+mask (default: barlow).")
    ] = None,
    config: Annotated[
        list[Path] | None, typer.Option("--config", help="YAML preset(s), applied in order.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. train.epochs=3.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Under torchrun: auto (nccl on GPU, gloo on CPU), gloo or nccl "
            "(= --set train.backend=...)."
        ),
    ] = None,
    verify: Verify = True,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Continue this earlier run on the new data (an incremental update; its "
            "config is the default).",
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="With --init: naive, replay, distill or replay+distill (default)."),
    ] = None,
    incremental: Annotated[
        list[str] | None,
        typer.Option(
            "--incremental", help="With --init: key=value, e.g. replay_users=5000, compat=false."
        ),
    ] = None,
) -> None:
    """Pretrain a user encoder with Barlow Twins, the dual encoder, or both combined.

    Data-parallel on several processes or machines: torchrun --nproc_per_node N -m seqtwins
    pretrain ... (rank 0 writes the run; see docs/distributed.md).
    """
    from seqtwins.api import pretrain as run_pretrain
    from seqtwins.distributed import is_main_process

    if resume and backend is not None:
        raise SeqtwinsError("--resume continues with the run's saved train.backend; drop --backend")
    extra = [f"train.backend={backend}"] if backend is not None else []
    inc = [*(incremental or []), *([f"strategy={strategy}"] if strategy is not None else [])]
    if init is None and inc:
        raise SeqtwinsError("--strategy / --incremental need --init OLD_RUN (the run to update)")
    with collected_warnings() as caught:
        summary = run_pretrain(
            data, out, objective=objective, config=config or [],
            overrides=[*(overrides or []), *extra], resume=resume, progress=progress,
            overwrite=overwrite, verify=verify, init=init, incremental=inc,
        )  # fmt: skip
    if not is_main_process():  # under torchrun, rank 0 alone reports
        return
    print_warnings(caught)
    best = "n/a" if summary.best_score is None else f"{summary.best_score:.4f}"
    console.print(
        f"trained {summary.epochs_done} epochs ({summary.steps} steps, {summary.seconds:.0f}s)"
        f"{' - stopped early' if summary.stopped_early else ''}; best validation score "
        f"{best} at epoch {summary.best_epoch}; run in {summary.run_dir}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@command()
def embed(
    run: Annotated[Path, typer.Argument(help="A run directory (seqtwins pretrain).")],
    data: Annotated[Path, typer.Option("--data", help="The run's dataset directory.")],
    out: Annotated[Path, typer.Option("--out", help="Output .parquet file.")],
    sequences: Annotated[
        Path | None,
        typer.Option(help="Embed new sequences instead: CSV (id, items) or JSON lines."),
    ] = None,
    which: Annotated[
        str, typer.Option("--which", "--checkpoint", help="Checkpoint: best (on valid) or last.")
    ] = "best",
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: embed only the i-th (0-based) of n contiguous blocks of users, so that "
            "n processes split the work; the n files in order = the unsharded file."
        ),
    ] = None,
    verify: Verify = True,
) -> None:
    """Export user embeddings (the encoder's pooled output) to Parquet."""
    from seqtwins.distributed import parse_shard
    from seqtwins.embed import export_embeddings
    from seqtwins.run import check_checkpoint

    check_checkpoint(which, "--which")
    part = parse_shard(shard) if shard is not None else (0, 1)
    with collected_warnings() as caught:
        summary = export_embeddings(run, data, out, sequences_file=sequences, which=which,
                                    shard=part, verify=verify)  # fmt: skip
    print_warnings(caught)
    of = f" (shard {part[0]}/{part[1]})" if shard is not None else ""
    console.print(
        f"wrote {summary.rows} embeddings of dimension {summary.dim}{of} to {summary.out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


Checkpoint = Annotated[str, typer.Option(help="Checkpoint: best (on valid) or last.")]
Embeddings = Annotated[
    Path | None,
    typer.Option(help="The dataset users' embeddings from `seqtwins embed` (not recomputed)."),
]


@command()
def serve(
    run: Annotated[Path, typer.Argument(help="A run directory (seqtwins pretrain).")],
    data: Annotated[Path, typer.Option("--data", help="The run's dataset directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the run).")] = 1,
    checkpoint: Checkpoint = "best",
    max_batch: Annotated[int, typer.Option(help="Most sequences per /embed request.")] = 256,
    max_sequence_length: Annotated[
        int, typer.Option(help="Most item ids per sequence in a request.")
    ] = 1000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 4 << 20,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    threads: Annotated[
        int,
        typer.Option(help="torch and FAISS threads per worker (more workers scale better)."),
    ] = 1,
    verify: Verify = True,
    embeddings: Embeddings = None,
) -> None:
    """Serve embeddings and nearest users over HTTP (JSON; docs/serve.md)."""
    from seqtwins.serve.limits import Limits
    from seqtwins.serve.server import serve as run_server
    from seqtwins.settings import build

    given = {"max_batch": max_batch, "max_sequence_length": max_sequence_length,
             "max_body_bytes": max_body_bytes}  # fmt: skip
    try:
        limits = build(Limits, given)
    except SeqtwinsError as e:  # named as the flag typed: --max-batch=0 must be ...
        raise SeqtwinsError(_as_flag(str(e), set(given), [])) from None
    run_server(run, data, host=host, port=port, workers=workers, which=checkpoint,
               verify=verify, limits=limits, access_log=access_log, threads=threads,
               embeddings=embeddings)  # fmt: skip


@command()
def export(
    run: Annotated[Path, typer.Argument(help="A run directory (seqtwins pretrain).")],
    out: Annotated[Path, typer.Option("--out", help="Output file, e.g. model.onnx.")],
    format: Annotated[str, typer.Option("--format", help="onnx.")] = "onnx",
    checkpoint: Checkpoint = "best",
) -> None:
    """Export the encoder (pooling included) for other runtimes: ONNX, dynamic batch and
    length."""
    from seqtwins.serve.export import export_onnx

    summary = export_onnx(run, out, which=checkpoint, fmt=format)
    console.print(
        f"wrote {summary.out} (opset {summary.opset}, items (batch, length <= "
        f"{summary.max_len}) -> user_embedding (batch, {summary.dim})); ONNX Runtime matches "
        f"torch within {summary.max_abs_diff:.2g} on {summary.checked} sequences",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@command()
def neighbors(
    run: Annotated[Path, typer.Argument(help="A run directory (seqtwins pretrain).")],
    data: Annotated[Path, typer.Option("--data", help="The run's dataset directory.")],
    user: Annotated[str, typer.Option("--user", help="A user_id of the dataset.")],
    k: Annotated[int, typer.Option("-k", help="How many neighbours.")] = 20,
    checkpoint: Checkpoint = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    verify: Verify = True,
    embeddings: Embeddings = None,
) -> None:
    """The dataset users nearest to one user (cosine of embeddings, FAISS)."""
    from seqtwins.serve.model import nearest_users

    found = nearest_users(run, data, user, k=k, which=checkpoint, verify=verify,
                          embeddings=embeddings)  # fmt: skip
    if as_json:
        import json

        typer.echo(json.dumps(found.as_dict()))
        return
    typer.echo("rank\tuser_id\tcosine")
    for rank, (other, score) in enumerate(found.neighbors, 1):
        typer.echo(f"{rank}\t{other}\t{score:.4f}")


@command()
def prepare(
    input: Annotated[Path, typer.Argument(help="A log file or a MovieLens / S3-Rec folder.")],
    out: Annotated[Path, typer.Option("--out", help="The dataset directory to write.")],
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", help="YAML file(s) of settings by name, applied in order."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value by setting name, e.g. min_user_count=5."),
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="auto, csv, tsv, parquet, jsonl, movielens or s3rec.")
    ] = None,
    user_col: Annotated[str | None, typer.Option(help="User id column (tables).")] = None,
    item_col: Annotated[str | None, typer.Option(help="Item id column (tables).")] = None,
    time_col: Annotated[
        str | None, typer.Option(help="Time column: epoch seconds or ISO-8601.")
    ] = None,
    rating_col: Annotated[str | None, typer.Option(help="Rating column.")] = None,
    items: Annotated[
        Path | None, typer.Option("--items", help="Item table: id + categories columns.")
    ] = None,
    items_id_col: Annotated[str | None, typer.Option(help="Id column of --items.")] = None,
    categories_col: Annotated[
        str | None, typer.Option(help="Categories column of --items (list or a|b|c).")
    ] = None,
    users: Annotated[
        Path | None, typer.Option("--users", help="User table: id + attribute columns.")
    ] = None,
    users_id_col: Annotated[str | None, typer.Option(help="Id column of --users.")] = None,
    dedup: Annotated[
        bool | None,
        typer.Option("--dedup/--no-dedup", help="Keep the first of repeated (user, item)."),
    ] = None,
    min_rating: Annotated[float | None, typer.Option(help="Keep rating >= this.")] = None,
    min_user_count: Annotated[
        int | None, typer.Option(help="k-core: interactions per user (default 1).")
    ] = None,
    min_item_count: Annotated[
        int | None, typer.Option(help="k-core: interactions per item (default 1).")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(help="Keep each user's most recent N interactions.")
    ] = None,
    holdout: Annotated[
        int | None, typer.Option(help="Size of the held-out future window (default 5).")
    ] = None,
    min_history: Annotated[
        int | None, typer.Option(help="Items kept as history at least (default 3).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="train,valid,test user fractions (default 0.8,0.1,0.1).")
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Seed of the user split (default 0).")
    ] = None,
    pseudonymize: Annotated[
        bool | None,
        typer.Option(
            "--pseudonymize/--no-pseudonymize",
            help="Replace user ids by keyed hashes (key: --key-file, --salt-file or "
            "$SEQTWINS_PSEUDONYM_KEY; docs/privacy.md).",
        ),
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="File holding the pseudonymisation key. Keep it secret.")
    ] = None,
    salt_file: Annotated[
        Path | None, typer.Option(help="HMAC key file; created if absent. Keep it secret.")
    ] = None,
    min_item_users: Annotated[
        int | None,
        typer.Option(
            help="Items seen by fewer distinct users are dropped (or --rare-items token)."
        ),
    ] = None,
    rare_items: Annotated[
        str | None,
        typer.Option(help="With --min-item-users: drop (default) or token (one rare item)."),
    ] = None,
    on_bad_rows: Annotated[
        str | None,
        typer.Option(
            help="error (default: name the first bad rows) or skip (drop and count them)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out (a seqtwins dataset only).")
    ] = False,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Bound on memory, e.g. 4GB or 512MB: a CSV/TSV/Parquet log that needs more "
            "is prepared out of core (bucket by bucket on disk), with the same result."
        ),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Folder for out-of-core buckets (default: beside --out).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Keep interactions at or after this time (epoch s or ISO date)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Keep interactions before this time: the window is [since, until)."),
    ] = None,
    update: Annotated[
        Path | None,
        typer.Option(
            help="An earlier dataset: keep its item ids and user splits, append new items."
        ),
    ] = None,
) -> None:
    """Turn a raw interaction log into a canonical dataset directory.

    Settings come from the defaults, then --config files, then the flags, then --set (keys
    are the setting names of docs/prepare.md, e.g. min_user_count or user_col).
    """
    from seqtwins.data.memory import tuned_process
    from seqtwins.data.prepare import prepare as run_prepare

    flags: dict[str, Any] = {
        "format": format, "user_col": user_col, "item_col": item_col, "time_col": time_col,
        "rating_col": rating_col, "items_file": items, "items_id_col": items_id_col,
        "categories_col": categories_col, "users_file": users, "users_id_col": users_id_col,
        "on_bad_rows": on_bad_rows, "dedup": dedup, "min_rating": min_rating,
        "min_user_count": min_user_count, "min_item_count": min_item_count,
        "max_len": max_len, "holdout": holdout, "min_history": min_history,
        "split_seed": split_seed, "pseudonymize": pseudonymize, "salt_file": salt_file,
        "key_file": key_file, "min_item_users": min_item_users, "rare_items": rare_items,
        "work_dir": work_dir, "overwrite": overwrite or None,
        "since": since, "until": until, "update": update,
    }  # fmt: skip
    options = _prepare_options(config or [], flags, split, memory_budget, overrides or [])
    with tuned_process():  # an entry point: gc off and glibc malloc tuned while it runs
        summary = run_prepare(input, out, options)
    for line in summary.lines():
        console.print(line, highlight=False, soft_wrap=True)


def _prepare_options(
    config: list[Path],
    flags: dict[str, Any],
    split: str | None,
    memory_budget: str | None,
    overrides: list[str],
) -> PrepareOptions:
    """``PrepareOptions`` from the files, the flags given (``None``: not given), ``--set``."""
    from seqtwins.data.memory import parse_size
    from seqtwins.data.options import build_options
    from seqtwins.settings import load_yaml  # not seqtwins.config: no torch for prepare

    if split is not None:
        try:
            fractions = [float(x) for x in split.split(",")]
        except ValueError:
            fractions = []
        if len(fractions) != 3:
            raise SeqtwinsError(f"--split={split!r} must be three numbers like 0.8,0.1,0.1")
        flags = {**flags, "split": fractions}
    if memory_budget is not None:
        flags = {**flags, "memory_budget": parse_size(memory_budget)}
    layers = [load_yaml(p) for p in config]
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return build_options(*layers, given, overrides=overrides)
    except SeqtwinsError as e:  # a bad flag value is named as the flag the user typed
        raise SeqtwinsError(_as_flag(str(e), set(given), overrides)) from None


_FLAG_NAMES = {"items_file": "--items", "users_file": "--users"}


def _as_flag(message: str, flags: set[str], overrides: list[str]) -> str:
    """``min_user_count=0 must ...`` as ``--min-user-count=0 must ...`` when that setting
    came from its flag (not from ``--set`` or a file): name what the user wrote."""
    key = message.split("=", 1)[0].split("[", 1)[0]  # split[0]=nan: the flag --split
    if key not in flags or any(o.split("=", 1)[0].strip() == key for o in overrides):
        return message
    flag = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
    return flag + message[len(key) :]


@command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="The dataset directory to write.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 5000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed = same dataset).")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out (a seqtwins dataset only).")
    ] = False,
) -> None:
    """Generate the embedded synthetic default (known taste, drift and transition signal)."""
    from seqtwins.data.synth import SynthConfig, synthesize
    from seqtwins.settings import build

    try:
        cfg = build(SynthConfig, {"users": users, "items": items, "seed": seed})
    except SeqtwinsError as e:  # named as the flag typed: --users=0 must be >= 1
        raise SeqtwinsError(_as_flag(str(e), {"users", "items", "seed"}, [])) from None
    path = synthesize(out, cfg, overwrite=overwrite)
    console.print(
        f"wrote synthetic dataset to {path}; look at it with `seqtwins inspect {path}`",
        highlight=False,
        soft_wrap=True,
    )


@command()
def download(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ml-20m or ml-latest-small.")],
    cache_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Download folder (default: ~/.cache/seqtwins)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Mirror of files.grouplens.org/datasets/movielens.",
            envvar="SEQTWINS_DOWNLOAD_BASE",
            show_envvar=True,
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Download and unpack again.")] = False,
) -> None:
    """Fetch an official MovieLens archive, verify its checksum, unpack it."""
    from seqtwins.data.download import download as fetch

    result = fetch(name, cache_dir, base_url, force=force, console=err_console)
    if result.md5 is None:
        state = "already present"
    else:
        how = "downloaded" if result.downloaded else "reused the archive"
        state = f"{how}, MD5 {result.md5} verified, unpacked"
    for line in (f"{result.name}: {state} in {result.folder}",
                 f"next: {result.prepare_command()}"):  # fmt: skip
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (seqtwins pretrain).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The runs' dataset directory (with --compat: optional)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results file (eval.json; with --compat: JSON).")
    ] = None,
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", help="Tasks (default: all supported).")
    ] = None,
    fractions: Annotated[
        list[float] | None, typer.Option("--fractions", help="Label budgets in (0, 1].")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Labelled subsets per fraction.")] = 3,
    protocol: Annotated[str, typer.Option(help="linear, mlp or finetune.")] = "linear",
    baselines: Annotated[
        list[str] | None,
        typer.Option(
            "--baselines",
            help="Floors: majority, history, items-knn, random-init, tfidf-svd, "
            "tfidf-svd-window (default: all).",
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Checkpoint of every run: best (selected on valid users) or last (fixed epochs)."
        ),
    ] = "best",
    faithfulness: Annotated[
        bool,
        typer.Option(
            help="Also run the deletion test of each run's attributions (needs Captum; "
            "docs/explain.md)."
        ),
    ] = False,
    faithfulness_users: Annotated[
        int, typer.Option(help="Test users of the deletion test, per run.")
    ] = 500,
    progress: Annotated[bool, typer.Option(help="Print progress.")] = True,
    verify: Verify = True,
    compat: Annotated[
        bool,
        typer.Option(
            "--compat",
            help="Give OLD_RUN NEW_RUN: score probes fitted on the old run's embeddings on "
            "the new run's (as a fraction of their score on the old ones).",
        ),
    ] = False,
) -> None:
    """Evaluate runs and the floors with few labels, on identical labelled subsets."""
    from seqtwins.api import evaluate as evaluate_runs
    from seqtwins.evaluate.runs import BASELINES

    if compat:
        _evaluate_compat(runs, data, out, tasks, checkpoint, verify)
        return
    if data is None or out is None:
        raise SeqtwinsError("evaluate needs --data (the runs' dataset) and --out (eval.json)")

    results = evaluate_runs(
        runs, data, out, tasks=tasks, fractions=fractions or (0.01, 0.05, 0.1, 0.25, 1.0),
        seeds=seeds, protocol=protocol, baselines=baselines or BASELINES, progress=progress,
        verify=verify, checkpoint=checkpoint, faithfulness=faithfulness,
        faithfulness_users=faithfulness_users,
    )  # fmt: skip
    console.print(
        f"evaluated {', '.join(results['methods'])} ({checkpoint} checkpoints) on "
        f"{', '.join(results['tasks'])}; wrote {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _evaluate_compat(
    runs: list[Path], data: Path | None, out: Path | None, tasks: list[str] | None,
    checkpoint: str, verify: bool,
) -> None:  # fmt: skip
    """``evaluate --compat OLD_RUN NEW_RUN``: one line per task (docs/incremental.md)."""
    from seqtwins.files import write_json
    from seqtwins.incremental.compat import compat_lines, compat_scores

    if len(runs) != 2:
        raise SeqtwinsError(f"--compat takes two runs, OLD_RUN NEW_RUN; got {len(runs)}")
    result = compat_scores(runs[0], runs[1], data, tasks, checkpoint, verify=verify)
    if out is not None:
        write_json(out, result)
    for line in compat_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@command()
def run(
    experiment: Annotated[
        Path | None, typer.Argument(help="Experiment YAML (default: the embedded demo).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output root folder.")] = Path("out"),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. pretrain.train.epochs=2.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The main job: data -> pretrain each objective -> evaluate -> report, resumable."""
    from seqtwins.experiment import load_experiment, run_experiment

    cfg = load_experiment(experiment, overrides)
    result = run_experiment(cfg, out, progress=progress, say=console.print)
    console.print(f"[bold]report:[/] {result.report_dir / 'report.md'}")


@command()
def report(
    evals: Annotated[
        list[Path], typer.Argument(help="eval.json file(s) written by `seqtwins evaluate`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md and the PNG plots.")],
) -> None:
    """Markdown report with tables (mean ± std, gain of barlow over dual, floors) and plots."""
    from seqtwins.evaluate.report import write_report

    path = write_report(evals, out)
    console.print(f"report: {path}", markup=False, highlight=False, soft_wrap=True)


@command()
def explain(
    run: Annotated[Path, typer.Argument(help="A run directory (seqtwins pretrain).")],
    data: Annotated[Path, typer.Option("--data", help="The run's dataset directory.")],
    user: Annotated[str, typer.Option("--user", help="The user's id (users.parquet user_id).")],
    task: Annotated[
        str | None,
        typer.Option("--task", help="Also explain this task's probe prediction (as evaluate)."),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Nearest users / items to list.")] = 10,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
    items: Annotated[
        bool | None,
        typer.Option(
            "--items/--no-items",
            help="Nearest items by the run's item tower (default: where the objective has one).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    embeddings: Embeddings = None,
    verify: Verify = True,
) -> None:
    """Why a user's embedding is what it is: per-item attributions (Captum), nearest users
    and the items they share, nearest items. See docs/explain.md."""
    from seqtwins.explain import explain_user
    from seqtwins.explain.render import render_explanation

    result = explain_user(run, data, user, task=task, k=k, checkpoint=checkpoint, items=items,
                          verify=verify, embeddings=embeddings)  # fmt: skip
    if as_json:
        typer.echo(result.to_json())
    else:
        render_explanation(result, console)


@command()
def tune(
    experiment: Annotated[
        Path | None, typer.Argument(help="Experiment YAML (default: the embedded demo).")
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Finished trials wanted per objective, in total: a rerun resumes "
            "and runs only the missing ones (default: tune.trials)."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds per objective for this call (default: tune.timeout)."),
    ] = None,
    objectives: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset, e.g. barlow,dual (default: all)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output root folder.")] = Path("out"),
    write_preset: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the tuned experiment (default: <out>/<name>/tune/tuned.yaml)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. tune.epochs=3.")
    ] = None,
    progress: Annotated[
        bool, typer.Option(help="Print a line per trial, and on a terminal each trial's bar.")
    ] = True,
) -> None:
    """Optuna search per objective, scored on valid users; writes the best values back as
    a preset experiment and the search history. Every objective gets the SAME budget
    (trials, timeout, tune.epochs): a fairness rule of the barlow-vs-dual study."""
    from rich.table import Table

    from seqtwins.experiment import load_experiment
    from seqtwins.tune import tune_experiment

    cfg = load_experiment(experiment, overrides)
    chosen = [o.strip() for o in objectives.split(",") if o.strip()] if objectives else None
    with collected_warnings() as caught:
        results = tune_experiment(
            cfg, out, trials=trials, timeout=timeout, objectives=chosen,
            write_preset=write_preset, progress=progress, say=console.print,
            source=experiment or "the embedded demo",
        )  # fmt: skip
    print_warnings(caught)
    for r in results.values():
        table = Table(title=f"{r.objective}: best {r.best_value:.4f} (trial {r.best_trial}), "
                      f"{r.n_trials} trials")  # fmt: skip
        table.add_column("setting")
        table.add_column("best value")
        for key, value in r.best_params.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
        console.print(f"history: {r.history}", markup=False, highlight=False, soft_wrap=True)
    preset = write_preset or out / cfg.name / "tune" / "tuned.yaml"
    console.print(f"[bold]preset:[/] {preset}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="seqtwins")


if __name__ == "__main__":  # pragma: no cover
    main()
