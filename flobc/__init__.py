"""flobc: blockchain-backed federated learning over a PBFT-replicated LevelDB ledger."""

__version__ = "0.1.0"
