"""The learning protocol that validators and trainers share: transactions, state records
and their verification, genesis settings, reputation, aggregation maths, and the
registries of its variation points. It builds on consensus and storage and knows
nothing of nodes, trainers or any machine-learning framework."""
