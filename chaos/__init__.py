"""Chaos, soak and fuzz: evidence that nothing is lost and nothing runs twice (issue 7).

``python -m chaos --help`` runs the scenarios with a seed, a size and a time budget and prints
what RELIABILITY.md reports; ``tests/chaos`` runs a bounded version of each under the ``chaos``
pytest marker. Every scenario ends with ``chaos.audit`` over the database and the side-effect
ledger.
"""
