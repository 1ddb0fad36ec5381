"""The node's HTTP side: STOW-RS in (stow.py), health and metrics (server.py)."""
