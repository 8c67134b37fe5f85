"""A learning chain's version-0 weights, shipped beside its genesis file.

Version 0 is computed once, when a testnet is written, from the model name and seed, and
shipped as bytes (``genesis-model.bin``) whose SHA-256 genesis records: every validator
and trainer then starts from the same weights without ever initialising a model itself.
"""

from __future__ import annotations

from pathlib import Path

from flobc.config import ConfigError

GENESIS_MODEL = "genesis-model.bin"


def load_genesis_model(genesis_path: Path) -> bytes:
    """The ``genesis-model.bin`` beside a genesis file (its hash is checked against
    ``app.model_v0_hash`` by whoever uses it)."""
    path = genesis_path.parent / GENESIS_MODEL
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the genesis model {path}: {exc.strerror}; it is "
                          "written by 'flobc testnet init --app fl'") from exc
