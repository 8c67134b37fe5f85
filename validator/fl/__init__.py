"""The federated-learning application: transactions, state, rounds, aggregation, trust.

``app.FLApp`` is what consensus runs; docs/fl-protocol.md is the contract it keeps.
"""
