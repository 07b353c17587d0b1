"""Models: the sequence encoder (user embedding) and the heads on top of it."""

from seqtwins.models.encoder import EncoderConfig, SequenceEncoder
from seqtwins.models.heads import Projector

__all__ = ["EncoderConfig", "Projector", "SequenceEncoder"]
