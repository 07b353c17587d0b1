"""The settings of an incremental update (``seqtwins pretrain NEW --init OLD``)."""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("naive", "replay", "distill", "replay+distill")
DISTILL_LOSSES = ("l2", "barlow")
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class IncrementalConfig:
    """How a run continues from an earlier one on newer data, and what keeps it from
    forgetting. Recorded in the new run's ``incremental.json`` (a resumed update reads it
    from there)."""

    strategy: str = "replay+distill"
    """``naive`` (fine-tune on the new data only), ``replay`` (mix a reservoir of older
    training sequences into the epochs), ``distill`` (a predictor maps new embeddings to
    the frozen old encoder's, on the same sequences: CaSSLe, Fini et al. CVPR 2022) or
    ``replay+distill`` (both; the default)."""
    replay_users: int | None = None
    """Reservoir size in users (sequences); ``None``: ``replay_fraction`` of the new
    training users."""
    replay_fraction: float = 0.5
    """Reservoir size as a fraction of the new dataset's training users (when
    ``replay_users`` is unset)."""
    distill_weight: float = 5.0
    """Weight of the distillation loss (``distill`` strategies). The relative L2 losses
    start near 0.02 while the Barlow Twins loss is about 1: 5 makes them matter (not
    tuned; docs/incremental.md shows what it gave)."""
    distill_loss: str = "l2"
    """``l2``: relative squared error between predicted and old embeddings (zero when they
    agree); ``barlow``: the Barlow Twins loss between them, as CaSSLe does."""
    compat: bool = True
    """Backward-compatibility loss: keep new embeddings usable by probes fitted on the old
    ones, by pulling them towards the old embeddings of the same sequences (the "influence"
    idea of Shen et al., CVPR 2020, "Towards Backward-Compatible Representation Learning",
    with the old embedding space as the fixed target). On by default."""
    compat_weight: float = 50.0
    """Weight of the compatibility loss. 50: on ML-1M (trained runs, two seeds) it kept an
    old ``future_items`` probe at 103 % / 96 % of its score where 5 kept 87 % / 90 %, with
    the same forgetting, plasticity and cost, and changed nothing on a synthetic log with
    drift (docs/incremental.md)."""
    which: str = "best"
    """Checkpoint of the old run to start from and distil from: ``best`` or ``last``."""
    seed: int = 0
    """Seed of the replay reservoir sampling."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"incremental.{msg}")

        need(self.strategy in STRATEGIES,
             f"strategy={self.strategy!r} must be one of {', '.join(STRATEGIES)}")  # fmt: skip
        need(self.replay_users is None or self.replay_users >= 1,
             f"replay_users={self.replay_users} must be >= 1 (or unset)")  # fmt: skip
        need(0 < self.replay_fraction <= 10,
             f"replay_fraction={self.replay_fraction} must be in (0, 10]")  # fmt: skip
        for name in ("distill_weight", "compat_weight"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        kinds = ", ".join(DISTILL_LOSSES)
        need(self.distill_loss in DISTILL_LOSSES,
             f"distill_loss={self.distill_loss!r} must be one of {kinds}")  # fmt: skip
        need(self.which in CHECKPOINTS, f"which={self.which!r} must be best or last")
        need(self.seed >= 0, f"seed={self.seed} must be >= 0")

    @property
    def replay(self) -> bool:
        return "replay" in self.strategy

    @property
    def distill(self) -> bool:
        return "distill" in self.strategy

    @property
    def needs_old_encoder(self) -> bool:
        """Whether training runs the frozen old encoder on each batch."""
        return (self.distill and self.distill_weight > 0) or (
            self.compat and self.compat_weight > 0
        )

    def reservoir_size(self, new_train_users: int) -> int:
        """Users in the replay reservoir for a new dataset with this many training users."""
        if self.replay_users is not None:
            return self.replay_users
        return max(1, round(self.replay_fraction * new_train_users))
