"""Explanations that can be checked (docs/explain.md).

- :mod:`~seqtwins.explain.attribution` — per-item attributions with Captum: integrated
  gradients on the item-embedding layer, occlusion by removing one item;
- :mod:`~seqtwins.explain.probe` — a task's probe fitted as ``seqtwins evaluate`` fits it,
  and its confidence;
- :mod:`~seqtwins.explain.user` — :func:`explain_user`, what ``seqtwins explain`` prints, and
  :class:`Explainer`, which loads a run once and explains many users (``seqtwins serve``);
- :mod:`~seqtwins.explain.faithfulness` — the deletion test: attributed vs random items;
- :mod:`~seqtwins.explain.global_views` — the report's global views: principal directions,
  the categories and items that move them, category centroids on the 2-D map.

Captum is imported on first use (``pip install "seqtwins[explain]"``).
"""

from seqtwins.explain.user import SCHEMA, Explainer, Explanation, explain_user

__all__ = ["SCHEMA", "Explainer", "Explanation", "explain_user"]
