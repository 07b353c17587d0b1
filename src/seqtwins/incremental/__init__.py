"""Incremental pretraining: continue a run on newer data without forgetting.

``seqtwins pretrain NEW_DATA --init OLD_RUN --out NEW_RUN`` (docs/incremental.md):

- :mod:`~seqtwins.incremental.config`: :class:`IncrementalConfig` (strategy, replay size,
  loss weights);
- :mod:`~seqtwins.incremental.growth`: the item table grows for new items;
- :mod:`~seqtwins.incremental.replay`: the replay reservoir (Algorithm R);
- :mod:`~seqtwins.incremental.losses`: distillation and compatibility losses;
- :mod:`~seqtwins.incremental.update`: what training calls (start, attach, wrap, record);
- :mod:`~seqtwins.incremental.compat`: ``seqtwins evaluate --compat OLD NEW``.
"""

from seqtwins.incremental.config import STRATEGIES, IncrementalConfig

__all__ = ["STRATEGIES", "IncrementalConfig"]
