"""The trainer's own record of the rounds it sent updates in, kept across restarts.

The chain refuses a second update per trainer and round, but a trainer should never
try: an update it sent may still be in a mempool, invisible to ``/fl/rounds/{r}``,
when the trainer restarts. So a round is journalled *before* its update is sent, and
a restarted trainer skips every journalled round: at most one update per round, even
when a crash lands between sending and hearing back.
"""

from __future__ import annotations

import json
from pathlib import Path

from flobc.config import ConfigError
from flobc.trainer.files import write_atomic

JOURNAL_FILE = "journal.json"
KEEP_ROUNDS = 32
"""Rounds only move forward, so older entries are never consulted again."""
SENDING, SUBMITTED, ON_CHAIN = "sending", "submitted", "on_chain"


class Journal:
    """Round -> (state, tx hash) for the latest ``KEEP_ROUNDS`` rounds, on disk."""

    def __init__(self, home: Path) -> None:
        self.path = home / JOURNAL_FILE
        self._rounds: dict[int, tuple[str, str | None]] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        try:
            data = json.loads(text)
            self._rounds = {int(r): (str(e["state"]), e["tx_hash"])
                            for r, e in data["rounds"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path} is not a trainer journal ({exc!r}); the chain "
                              "still refuses double updates, so it may be removed") from exc

    def get(self, round_: int) -> tuple[str, str | None] | None:
        """(state, tx hash) of the update for ``round_``, or None if none was sent."""
        return self._rounds.get(round_)

    def record(self, round_: int, state: str, tx_hash: str | None) -> None:
        """Note ``round_`` durably; the file is replaced atomically."""
        self._rounds[round_] = (state, tx_hash)
        for old in sorted(self._rounds)[:-KEEP_ROUNDS]:
            del self._rounds[old]
        rounds = {str(r): {"state": s, "tx_hash": h} for r, (s, h) in self._rounds.items()}
        write_atomic(self.path, json.dumps({"rounds": rounds}, indent=1).encode())
