"""Data-parallel pretraining: DDP on 2 gloo processes equals one process on the global batch.

The loss-level checks (global-batch Barlow statistics, negatives from all ranks) live in
``tests/objectives``; here: the whole training step (batch sharding, global batch norms,
DDP gradient averaging), the training loop under DDP (equal to the single-process run,
rank 0 writes, resume), ``torchrun -m seqtwins pretrain``, and ``embed --shard``.

Parameters are compared after SGD steps. AdamW would make them differ for a reason that
has nothing to do with DDP: some directions have an analytically zero gradient (the key
bias of attention, under the softmax's shift invariance; ``ln_f.bias`` under Barlow Twins'
batch standardisation), Adam divides their ~1e-9 rounding noise by its own square root
and moves them by ~lr in a random direction, so two single-process runs that only sum in
another order already differ there.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

import seqtwins.train as train_mod
from seqtwins.checkpoint import load_model_tensors
from seqtwins.cli import app
from seqtwins.config import PretrainConfig, build
from seqtwins.data.batching import PretrainBatches, batch_plan
from seqtwins.data.dataset import SequenceDataset
from seqtwins.distributed import (
    GlobalBatchNorm1d,
    World,
    convert_batchnorm,
    env_ranks,
    parse_shard,
    resolve_backend,
    shard_range,
)
from seqtwins.errors import SeqtwinsError
from seqtwins.models.encoder import build_encoder
from seqtwins.objectives import build_objective
from seqtwins.run import Run
from seqtwins.train import load_encoder, pretrain
from tests.helpers import spawn_ranks, tiny_dataset

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD = 2
TINY = [
    "encoder.dim=16", "encoder.heads=2", "encoder.ff_dim=32", "encoder.max_len=12",
    "augment.max_len=12", "barlow.projector=[32,32]", "train.batch_size=32",
    "train.epochs=1", "train.log_every=1", "train.lr=0.003",
    # exact comparisons: no dropout (its RNG differs per rank), fp32
    "encoder.dropout=0.0", "train.precision=fp32", "train.threads=1",
]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


def _cfg(objective: str, *extra: str) -> PretrainConfig:
    return build(PretrainConfig, {"objective": objective}, overrides=[*TINY, *extra])


def _init(rank: int, init_file: str) -> World:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    return World(rank=rank, size=WORLD, backend="gloo")


# ---------------------------------------------------------------- one step, by hand


def _raw_sum(x: torch.Tensor, distributed: bool) -> torch.Tensor:
    """The lightly-1977 bug: a raw all_reduce, invisible to autograd."""
    if not (distributed and dist.is_initialized()):
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y


def _one_step(data: Path, objective: str, world: World) -> dict[str, Any]:
    """One SGD step of the real pieces (first planned batch of epoch 0, this rank's share):
    the loss, gradients after DDP's averaging, parameters and buffers after the step."""
    cfg = _cfg(objective)
    ds = SequenceDataset.open(data)
    users = ds.split_users("train")
    hist = ds.sequences.history_lengths()
    users = users[hist[users] >= 2]
    torch.manual_seed(0)
    encoder = build_encoder(cfg.encoder, ds)
    pop = np.bincount(ds.sequences.items, minlength=ds.vocab_size).astype(np.float64)
    barlow = replace(cfg.barlow, distributed=world.active)
    dual = replace(cfg.dual, distributed=world.active)
    model = world.prepare(build_objective(objective, encoder, barlow, dual, cfg.next, pop))
    ddp = world.wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = batch_plan(users, hist, cfg.train.batch_size, 0, 0, bucket=True)
    transform = train_mod.build_transform(cfg, ds, users)
    batch = PretrainBatches(ds.sequences, plan, objective, 12, 0, 0, transform, world.shard)[0]
    loss, _ = ddp(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return {"loss": loss.item(), "grads": grads, "state": {k: v.clone() for k, v in
                                                           model.state_dict().items()}}  # fmt: skip


def _one_step_worker(rank: int, init_file: str, data: str, out: str) -> None:
    world = _init(rank, init_file)
    try:
        for objective in ("barlow", "dual", "barlow+next"):
            torch.save(_one_step(Path(data), objective, world), f"{out}/{objective}-{rank}.pt")
        import seqtwins.objectives.barlow as barlow_mod

        barlow_mod._sum_all_ranks = _raw_sum
        torch.save(_one_step(Path(data), "barlow", world), f"{out}/raw-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def one_step(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one_step")
    spawn_ranks(_one_step_worker, WORLD, str(out / "init"), str(data), str(out))
    return out


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("objective", ["barlow", "dual", "barlow+next"])
def test_ddp_step_equals_single_process_on_global_batch(data, one_step, objective):
    torch.set_num_threads(1)
    single = _one_step(data, objective, World())
    ranks = [torch.load(one_step / f"{objective}-{r}.pt") for r in range(WORLD)]
    # barlow: every rank holds the global loss; dual: the mean of the rank losses is it
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    assert mean_loss == pytest.approx(single["loss"], rel=1e-5)
    for r in ranks:  # DDP averaged the gradients: every rank has the global-batch gradient
        _assert_same(r["grads"], single["grads"])
        _assert_same(r["state"], single["state"])  # incl. the projector's BN running stats


def test_raw_all_reduce_gives_wrong_gradient(data, one_step):
    """With a non-autograd all_reduce in the Barlow loss the loss value is still the
    global one, but each rank's gradient misses the other ranks' share: after DDP's
    averaging it is about 1/world_size of the right one (lightly issue 1977, PR 1980)."""
    torch.set_num_threads(1)
    single = _one_step(data, "barlow", World())
    raw = torch.load(one_step / "raw-0.pt")
    assert raw["loss"] == pytest.approx(single["loss"], rel=1e-5)  # same value ...
    w = "projector.0.weight"  # ... wrong gradient, hence wrong parameters after the step
    assert not torch.allclose(raw["grads"][w], single["grads"][w], rtol=1e-2, atol=1e-4)
    assert not torch.allclose(raw["state"][w], single["state"][w], rtol=1e-3, atol=1e-5)
    flat = torch.cat([g.flatten() for g in single["grads"].values()])
    flat_raw = torch.cat([raw["grads"][k].flatten() for k in single["grads"]])
    ratio = float(flat_raw.norm() / flat.norm())
    assert ratio == pytest.approx(1 / WORLD, abs=0.1)


# ---------------------------------------------------------------- the training loop


SGD_RUN = ("train.lr=0.05", "train.weight_decay=0.0")


def _loop_worker(rank: int, init_file: str, data: str, out: str) -> None:
    _init(rank, init_file)
    try:
        adamw = torch.optim.AdamW
        torch.optim.AdamW = torch.optim.SGD  # type: ignore[misc,assignment]  # module docstring
        for objective in ("barlow", "dual"):
            pretrain(data, f"{out}/{objective}", _cfg(objective, *SGD_RUN), progress=False)
        torch.optim.AdamW = adamw  # type: ignore[misc]
        # kill after the checkpoint of step 2 (mid-epoch), then resume on both ranks
        cfg = _cfg("barlow", "train.epochs=2", "train.checkpoint_every=2")
        pretrain(data, f"{out}/full", cfg, progress=False)

        def kill(step: int) -> None:
            if step == 3:
                raise KeyboardInterrupt

        train_mod._after_step = kill
        with contextlib.suppress(KeyboardInterrupt):
            pretrain(data, f"{out}/killed", cfg, progress=False)
        train_mod._after_step = lambda step: None
        pretrain(data, f"{out}/killed", None, resume=True, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def loop_runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loop")
    spawn_ranks(_loop_worker, WORLD, str(out / "init"), str(data), str(out))
    return out


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["barlow", "dual"])
def test_ddp_run_equals_single_process_run(data, loop_runs, tmp_path, monkeypatch, objective):
    """Same plan, same rows (each rank its share), same augmentations: a 2-process epoch
    ends where the 1-process epoch ends (SGD: see the module docstring)."""
    torch.set_num_threads(1)
    monkeypatch.setattr(torch.optim, "AdamW", torch.optim.SGD)
    single = tmp_path / "single"
    pretrain(data, single, _cfg(objective, *SGD_RUN), progress=False)
    ddp = loop_runs / objective
    a = load_model_tensors(single / "checkpoints/last/model.safetensors")
    b = load_model_tensors(ddp / "checkpoints/last/model.safetensors")
    _assert_same(b, a)
    steps_a = [m for m in _metrics(single) if "step" in m and "event" not in m]
    steps_b = [m for m in _metrics(ddp) if "step" in m and "event" not in m]
    assert [m["step"] for m in steps_b] == [m["step"] for m in steps_a]  # written once each
    assert [m["loss"] for m in steps_b] == pytest.approx([m["loss"] for m in steps_a], rel=1e-4)
    valid_a = [m for m in _metrics(single) if m.get("event") == "valid"]
    valid_b = [m for m in _metrics(ddp) if m.get("event") == "valid"]
    assert valid_b[0]["loss"] == pytest.approx(valid_a[0]["loss"], rel=1e-4)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == WORLD


def test_ddp_kill_and_resume_reproduces_uninterrupted_run(loop_runs):
    a = load_model_tensors(loop_runs / "full/checkpoints/last/model.safetensors")
    b = load_model_tensors(loop_runs / "killed/checkpoints/last/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    losses = [[m["loss"] for m in _metrics(loop_runs / r) if "step" in m and "event" not in m]
              for r in ("full", "killed")]  # fmt: skip
    assert losses[0] == losses[1]


def test_batch_size_must_split_equally(data, tmp_path):
    with pytest.raises(SeqtwinsError, match=r"train.batch_size=31 must be divisible .* \(2\)"):
        train_mod._pretrain(data, Run(tmp_path / "run"), _cfg("barlow", "train.batch_size=31"),
                            False, False, False, World(rank=0, size=2))  # fmt: skip
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- torchrun end to end


def test_torchrun_pretrain_rank0_writes_and_run_loads(data, tmp_path):
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD),
            "-m", "seqtwins", "pretrain", str(data), "--out", str(run), "--no-progress",
            "--backend", "auto"]  # fmt: skip
    for s in TINY:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 1 epochs") == 1  # rank 0 alone reports
    assert "warning:" not in proc.stdout + proc.stderr  # e.g. no deprecation noise
    found = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert found == sorted([
        ".seqtwins.json", "config.yaml", "dataset.json", "metrics.jsonl", "summary.json",
        "model_card.md",
        *[f"checkpoints/{c}/{f}" for c in ("best", "last")
          for f in ("model.safetensors", "optim.safetensors", "rng.safetensors", "state.json")],
    ])  # fmt: skip
    steps = [m["step"] for m in _metrics(run) if "step" in m and "event" not in m]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no line twice
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["steps"] == len(steps)
    encoder, cfg = load_encoder(run)
    assert cfg.train.backend == "auto"
    assert encoder.embed(torch.tensor([[1, 2, 3]])).shape == (1, 16)


# ---------------------------------------------------------------- pieces


def test_shards_of_a_batch_are_exactly_its_rows(data):
    ds = SequenceDataset.open(data)
    cfg = _cfg("barlow+next")
    users = ds.split_users("train")
    hist = ds.sequences.history_lengths()
    plan = batch_plan(users, hist, 30, 0, 0, bucket=True)
    transform = train_mod.build_transform(cfg, ds, users)
    full = PretrainBatches(ds.sequences, plan, "barlow+next", 12, 0, 0, transform)[1]
    for world in (2, 3):
        for rank in range(world):
            part = PretrainBatches(ds.sequences, plan, "barlow+next", 12, 0, 0, transform,
                                   (rank, world))[1]  # fmt: skip
            for key, value in part.items():
                want = full[key][rank::world]
                if value.dim() == 2:  # own padding: the full batch may be wider
                    assert not want[:, value.shape[1] :].any()
                    want = want[:, : value.shape[1]]
                torch.testing.assert_close(value, want, rtol=0, atol=0)


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    proj = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
    ref.load_state_dict(proj.state_dict())
    conv = convert_batchnorm(proj)
    assert isinstance(conv[1], GlobalBatchNorm1d) and conv[1].weight is proj[1].weight
    assert conv.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(8, 4)
    torch.testing.assert_close(conv(x), ref(x))
    torch.testing.assert_close(conv[1].running_var, ref[1].running_var)


def test_backend_resolution_and_validation(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_backend("auto", cpu) == "gloo"
    assert resolve_backend("auto", gpu) == "nccl"
    assert resolve_backend("gloo", gpu) == "gloo"
    with pytest.raises(SeqtwinsError, match="train.backend=nccl needs CUDA"):
        resolve_backend("nccl", cpu)
    with pytest.raises(SeqtwinsError, match="train.backend='mpi'"):
        build(PretrainConfig, overrides=["train.backend=mpi"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SeqtwinsError, match="RANK=2, WORLD_SIZE=2"):
        env_ranks()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert env_ranks() == (1, 2, 1)


def test_pretrain_cli_backend_errors(data, tmp_path):
    res = runner.invoke(app, ["pretrain", str(data), "--out", str(tmp_path / "r"),
                              "--backend", "mpi"])  # fmt: skip
    assert res.exit_code == 2 and "train.backend='mpi' must be one of" in res.output
    res = runner.invoke(app, ["pretrain", str(data), "--out", str(tmp_path / "r"), "--resume",
                              "--backend", "gloo"])  # fmt: skip
    assert res.exit_code == 2 and "drop --backend" in res.output


@pytest.mark.parametrize("n, count", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_ranges_tile_in_order(n, count):
    blocks = [shard_range(n, i, count) for i in range(count)]
    assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in blocks]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(SeqtwinsError, match="must be i/n with 0 <= i < n"):
        parse_shard(text)
    assert parse_shard(" 1 / 3 ") == (1, 3)


# ---------------------------------------------------------------- embed --shard


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    pretrain(data, run, _cfg("barlow"), progress=False)
    return run


def test_embed_shards_concatenate_to_the_full_export(data, trained, tmp_path):
    full = tmp_path / "full.parquet"
    res = runner.invoke(app, ["embed", str(trained), "--data", str(data), "--out", str(full)])
    assert res.exit_code == 0, res.output
    parts = []
    for i in range(3):
        part = tmp_path / f"part-{i}.parquet"
        res = runner.invoke(app, ["embed", str(trained), "--data", str(data), "--out", str(part),
                                  "--shard", f"{i}/3"])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert f"(shard {i}/3)" in res.output
        parts.append(pl.read_parquet(part))
    assert {len(p) for p in parts} == {80}  # 240 users in 3 contiguous blocks
    joined = pl.concat(parts)
    want = pl.read_parquet(full)
    assert joined["user_id"].to_list() == want["user_id"].to_list()
    np.testing.assert_allclose(
        np.stack(joined["embedding"].to_numpy()), np.stack(want["embedding"].to_numpy()),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_embed_shard_of_new_sequences_and_bad_shard(data, trained, tmp_path):
    seqs = tmp_path / "new.csv"
    pl.DataFrame({"id": ["a", "b", "c"], "items": ["it1 it2", "it3", "it4 it5"]}).write_csv(seqs)
    ids = []
    for i in range(4):  # more shards than rows: one is empty
        part = tmp_path / f"p{i}.parquet"
        res = runner.invoke(app, ["embed", str(trained), "--data", str(data), "--out", str(part),
                                  "--sequences", str(seqs), "--shard", f"{i}/4"])  # fmt: skip
        assert res.exit_code == 0, res.output
        ids += pl.read_parquet(part)["user_id"].to_list()
    assert ids == ["a", "b", "c"]
    res = runner.invoke(app, ["embed", str(trained), "--data", str(data), "--out",
                              str(tmp_path / "x.parquet"), "--shard", "4/4"])  # fmt: skip
    assert res.exit_code == 2
    assert "--shard '4/4' must be i/n with 0 <= i < n" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.parquet").exists()
