"""Step time of ``barlow`` vs ``barlow+mask`` with the full and the sampled item softmax.

The measurement behind ``mask.full_max_items`` (seqtwins.objectives.masked_item): one
training step (forward, backward, AdamW) of the default encoder on a batch of 256 random
histories, one CPU thread, for several item counts and mean history lengths.

    python benchmarks/bench_mask_softmax.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from seqtwins.data.batching import ItemMasking, collate
from seqtwins.models import EncoderConfig, SequenceEncoder
from seqtwins.objectives import MaskConfig, build_objective

BATCH, MAX_LEN = 256, 50


def step_ms(name: str, items: int, softmax: str, mean_len: int) -> tuple[float, int]:
    """Median ms per step (5 steps after a warm-up) and the number of masked positions."""
    torch.manual_seed(0)
    enc = SequenceEncoder(EncoderConfig(), items + 2)
    obj = build_objective(name, enc, mask=MaskConfig(softmax=softmax),
                          item_popularity=np.ones(items + 2))  # fmt: skip
    rng = np.random.default_rng(0)
    lens = np.clip(rng.exponential(mean_len, BATCH).astype(int), 2, MAX_LEN)
    hists = [rng.integers(1, items + 1, n) for n in lens]

    def same(h: np.ndarray, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return h.copy(), h.copy()

    batch = collate(hists, "barlow+mask", MAX_LEN, rng, same,
                    masking=ItemMasking(0.2, items + 1))  # fmt: skip
    if name == "barlow":
        batch = {k: batch[k] for k in ("view_a", "view_b")}
    opt = torch.optim.AdamW(obj.parameters())
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        loss, _ = obj(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    masked = sum(int((batch[k] > 0).sum()) for k in ("target_a", "target_b") if k in batch)
    return float(np.median(times[1:])) * 1000, masked


def main() -> None:
    torch.set_num_threads(1)
    print("| mean len | items | barlow ms | + full softmax ms | + sampled (2048) ms |")
    print("|---|---|---|---|---|")
    for mean_len in (9, 40):
        for items in (3_500, 6_000, 12_000, 50_000):
            base, _ = step_ms("barlow", items, "full", mean_len)
            full, _ = step_ms("barlow+mask", items, "full", mean_len)
            sampled, _ = step_ms("barlow+mask", items, "sampled", mean_len)
            print(f"| {mean_len} | {items:,} | {base:.0f} | {full:.0f} | {sampled:.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
