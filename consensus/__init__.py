"""PBFT consensus, independent of machine learning: messages, certificates, the sans-IO
replica state machine, a deterministic network simulator and the asyncio transport."""
