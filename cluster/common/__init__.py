"""Types and helpers that both sides of the replica boundary use.

The router and the engines each import from here and never from each other;
nothing here imports anything else from ``cluster``.
"""
