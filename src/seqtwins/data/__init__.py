"""Datasets: readers of raw logs, the canonical directory format, the synthetic default."""

from seqtwins.data.dataset import SCHEMA_VERSION, SequenceDataset, write_dataset

__all__ = ["SCHEMA_VERSION", "SequenceDataset", "write_dataset"]
