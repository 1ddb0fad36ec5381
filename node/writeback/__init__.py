"""Write-back: the classification in the forwarded copies (docs/writeback.md, docs/private-dictionary.md).

bodypart: Body Part Examined by policy; private: the node's private block; derived: new UIDs for a
derived copy; copies: the per-job folder of annotated copies the deliverer sends instead of the originals.
"""

from __future__ import annotations

from node.writeback.copies import PreparedCopies, prepare_copies, wants_copies

__all__ = ["PreparedCopies", "prepare_copies", "wants_copies"]
