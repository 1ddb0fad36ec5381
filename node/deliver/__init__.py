"""Delivery: executes a delivery job's frozen plan (node.deliver.plan) with one sender per destination kind.

Nothing here imports the rules or the router: a delivery knows only its job and its plan.
"""
