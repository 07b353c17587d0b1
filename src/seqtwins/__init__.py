"""seqtwins: Barlow Twins self-supervised user representations from behaviour logs.

See arXiv:2505.00953 (Liu et al., 2025) for the method this package implements.
"""

from seqtwins.errors import SeqtwinsError

__version__ = "0.1.0"
__all__ = ["SeqtwinsError", "__version__"]
