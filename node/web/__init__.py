"""The node's HTTP side: one Starlette app served by uvicorn in a thread of the node's process: STOW-RS in
(stow.py), health (health.py) and metrics (metrics.py), assembled by server.py."""
