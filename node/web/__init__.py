"""The node's HTTP side: one Starlette app served by uvicorn in a thread of the node's process."""
