"""``pretrain NEW --init OLD``: weights carried over, lineage, config checks, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import seqtwins.train as train_mod
from seqtwins.api import pretrain
from seqtwins.checkpoint import load_model_tensors
from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.run import Run

from .conftest import tiny_cfg

runner = CliRunner()


def test_update_grows_the_table_and_records_its_lineage(windows, old_run, update_run):
    new = update_run  # the default strategy: replay+distill, with the compatibility loss
    w1, w2 = (SequenceDataset.open(p) for p in windows)
    record = json.loads((new / "incremental.json").read_text())
    assert record["parent_run"] == str(old_run)
    assert record["parent_data"]["content_hash"] == w1.content_hash
    assert record["data"]["content_hash"] == w2.content_hash
    assert record["items"]["kept"] == w1.num_items
    added = w2.num_items - w1.num_items
    assert added > 0 and record["items"]["from_neighbours"] + record["items"]["random"] == added
    assert record["replay"]["mixed_in"] > 0 and (new / "replay.parquet").is_file()
    # the new run is a run like any other: its config is the old one (epochs overridden)
    run = Run.open(new)
    assert run.config.encoder == Run.open(old_run).config.encoder
    assert run.encoder().item_emb.weight.shape[0] == w2.vocab_size
    run.objective()  # the predictor is not part of the objective: strict load still works
    tensors = load_model_tensors(new / "checkpoints/last/model.safetensors")
    assert any(k.startswith("incremental.predictor") for k in tensors)


def test_attach_keeps_old_rows_by_original_id(windows, old_run):
    from seqtwins.incremental.config import IncrementalConfig
    from seqtwins.incremental.update import start_update
    from seqtwins.models.encoder import build_encoder
    from seqtwins.objectives import build_objective

    parent = Run.open(old_run)
    w2 = SequenceDataset.open(windows[1])
    cfg = parent.config
    update, train_ds = start_update(Run(old_run.parent / "x"), w2, cfg, old_run,
                                    IncrementalConfig(strategy="naive"), False)  # fmt: skip
    model = build_objective(cfg.objective, build_encoder(cfg.encoder, w2), cfg.barlow, cfg.dual,
                            cfg.next)  # fmt: skip
    update.attach(model, train_ds, torch.device("cpu"))
    old_w = parent.encoder().item_emb.weight.detach()
    new_w = model.encoder.item_emb.weight.detach()
    old_ids = SequenceDataset.open(windows[0]).items["item_id"].to_list()
    new_ids = w2.items["item_id"].to_list()
    for i, item in enumerate(old_ids[:10]):
        torch.testing.assert_close(new_w[new_ids.index(item) + 1], old_w[i + 1])
    assert not torch.equal(new_w[len(old_ids) + 1], torch.zeros_like(new_w[0]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "encoder.dim=32"], "encoder.dim=32 differs from the old run's encoder.dim=16"),
        (["--set", "encoder.layers=3"], "encoder.layers=3 differs"),
        (["--objective", "dual"], "objective='dual' differs from the old run's 'barlow'"),
        (["--strategy", "forget"], "incremental.strategy='forget' must be one of"),
    ],
)
def test_mismatched_init_is_one_line_exit_2(windows, old_run, tmp_path, args, message):
    out = tmp_path / "new"
    r = runner.invoke(app, ["pretrain", str(windows[1]), "--init", str(old_run), "--out",
                            str(out), "--no-progress", *args])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_strategy_needs_init(windows, tmp_path):
    r = runner.invoke(app, ["pretrain", str(windows[1]), "--out", str(tmp_path / "r"),
                            "--strategy", "replay"])  # fmt: skip
    assert r.exit_code == 2 and "need --init" in r.output


def _losses(run) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "step" in x]


def test_killed_update_resumes_exactly(windows, old_run, tmp_path, monkeypatch):
    args = dict(overrides=["train.epochs=2", "train.checkpoint_every=2"], progress=False,
                init=old_run, incremental=["strategy=replay+distill"])  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    pretrain(windows[1], full, **args)

    def kill(step: int) -> None:
        if step == 7:  # after the checkpoint at step 6
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_after_step", kill)
    with pytest.raises(KeyboardInterrupt):
        pretrain(windows[1], killed, **args)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    pretrain(windows[1], killed, resume=True, progress=False)

    a = load_model_tensors(full / "checkpoints/last/model.safetensors")
    b = load_model_tensors(killed / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("incremental.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert _losses(full) == _losses(killed)
    assert np.isfinite(_losses(full)).all()
    assert (full / "incremental.json").read_text() == (killed / "incremental.json").read_text()


def test_experiment_init_names_an_objective_and_updates_it(windows, old_run, tmp_path):
    from seqtwins.experiment import ExperimentConfig, pretrain_run

    with pytest.raises(ValueError, match="init.dual names no objective"):
        ExperimentConfig(data={"synth": {}}, objectives={"barlow": {}}, init={"dual": "x"})
    cfg = Run.open(old_run).config
    run = pretrain_run(cfg, windows[1], tmp_path / "run", False, lambda *_: None,
                       (str(old_run), {"strategy": "naive", "compat": False}))  # fmt: skip
    record = json.loads((run / "incremental.json").read_text())
    assert record["incremental"]["strategy"] == "naive" and not record["incremental"]["compat"]


@pytest.mark.parametrize("objective", ["barlow", "dual", "barlow+next", "barlow+mask"])
def test_the_steps_own_first_view_embedding_is_the_encoders(windows, objective):
    """The update reads the new embedding of the first view (or the context) from the
    training step's own pass (``SequenceEncoder.tap``) instead of encoding it again: for
    every objective that recorded pass is the encoder's embedding of that view."""
    from seqtwins.data.batching import PretrainBatches, batch_plan
    from seqtwins.incremental.update import first_view
    from seqtwins.models.encoder import build_encoder
    from seqtwins.objectives import build_objective

    cfg = tiny_cfg(f"objective={objective}")
    ds = SequenceDataset.open(windows[1])
    users = ds.split_users("train")
    hist = ds.sequences.history_lengths()
    users = users[hist[users] >= 2]
    torch.manual_seed(0)
    pop = np.bincount(ds.sequences.items, minlength=ds.vocab_size).astype(np.float64)
    model = build_objective(objective, build_encoder(cfg.encoder, ds), cfg.barlow, cfg.dual,
                            cfg.next, pop, cfg.mask).eval()  # fmt: skip
    plan = batch_plan(users, hist, cfg.train.batch_size, 0, 0, bucket=True)
    batch = PretrainBatches(ds.sequences, plan, objective, cfg.encoder.max_len, 0, 0,
                            train_mod.build_transform(cfg, ds, users), (0, 1),
                            train_mod.item_masking(cfg, ds))[0]  # fmt: skip
    view = batch["view_a"] if "view_a" in batch else batch["context"]
    with model.encoder.tap() as taps:
        loss, _ = model(batch)
    assert model.encoder._taps is None  # recording stops with the block
    z = first_view(taps, view)
    assert z is not None and z.requires_grad and torch.isfinite(loss)
    with torch.no_grad():
        torch.testing.assert_close(z.detach(), model.encoder.embed(view), rtol=1e-5, atol=1e-5)
    assert first_view([], view) is None and first_view([z[:1]], view) is None


def test_update_step_adds_the_losses_on_the_steps_own_embedding(windows, old_run):
    """``UpdateStep`` adds ``w * distill + w * compat`` computed from the step's own embedding
    of the first view and the frozen old encoder's embedding of the same view (items the old
    table lacks left out), and does not run the new encoder a second time."""
    from seqtwins.data.batching import PretrainBatches, batch_plan
    from seqtwins.incremental.config import IncrementalConfig
    from seqtwins.incremental.losses import compat_loss, distill_loss
    from seqtwins.incremental.update import left_pack, start_update
    from seqtwins.models.encoder import build_encoder
    from seqtwins.objectives import build_objective

    parent = Run.open(old_run)
    cfg = parent.config
    w2 = SequenceDataset.open(windows[1])
    inc = IncrementalConfig(distill_weight=2.0, compat_weight=3.0)
    update, train_ds = start_update(Run(old_run.parent / "y"), w2, cfg, old_run, inc, False)
    torch.manual_seed(0)
    model = build_objective(cfg.objective, build_encoder(cfg.encoder, train_ds), cfg.barlow,
                            cfg.dual, cfg.next)  # fmt: skip
    update.attach(model, train_ds, torch.device("cpu"))
    model.eval()  # no dropout: the reference below must see the same embeddings
    step = update.wrap(model, model.encoder, model, torch.device("cpu"))
    users = train_ds.split_users("train")
    hist = train_ds.sequences.history_lengths()
    plan = batch_plan(users, hist, cfg.train.batch_size, 0, 0, bucket=True)
    batch = PretrainBatches(train_ds.sequences, plan, "barlow", cfg.encoder.max_len, 0, 0,
                            train_mod.build_transform(cfg, train_ds, users))[0]  # fmt: skip
    passes = []
    hook = model.encoder.register_forward_pre_hook(lambda *a: passes.append(1))
    embeds = []
    real_embed = model.encoder.embed
    model.encoder.embed = lambda items: embeds.append(items.shape) or real_embed(items)
    loss, logs = step(batch)
    model.encoder.embed = real_embed
    hook.remove()
    assert len(embeds) == 1 and not passes  # only the objective's own pass of both views
    with torch.no_grad():
        base, _ = model(batch)
        view = batch["view_a"]
        old_view = left_pack(torch.from_numpy(update.new_to_old)[view])
        seen = (old_view != 0).any(1)
        z_old = update.old_encoder.embed(old_view)[seen]
        z_new = model.encoder.embed(view)[seen]
        pred = model.get_submodule("incremental.predictor")(z_new)
        want = base + 2.0 * distill_loss(pred, z_old) + 3.0 * compat_loss(z_new, z_old)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)
    assert {"distill", "compat"} <= logs.keys()
