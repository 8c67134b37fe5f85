"""Pure checks and computations of PBFT view change.

A NEW-VIEW is valid when its proposals are exactly what any replica computes from its
view-change messages: for every sequence number between the highest stable checkpoint
and the highest prepared one, the block prepared in the highest view, or a null block.
Keeping that computation in one function means the new primary and every backup agree
on it by construction.
"""

from __future__ import annotations

from flobc.consensus.messages import (
    Block,
    Checkpoint,
    PreparedProof,
    ViewChange,
    null_block,
)
from flobc.consensus.validators import ValidatorSet


def prepared_proof_error(vs: ValidatorSet, proof: PreparedProof) -> str | None:
    """Why ``proof`` does not show that its block was prepared, or None."""
    pp = proof.proposal.pre_prepare
    block = proof.proposal.block
    if pp.replica != vs.primary(pp.view) or not vs.verify(pp):
        return "prepared proof: pre-prepare not signed by that view's primary"
    if block.height != pp.seq or block.digest() != pp.digest:
        return "prepared proof: block does not match its pre-prepare"
    senders = set()
    for p in proof.prepares:
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest):
            return "prepared proof: a prepare for another request"
        if p.replica == pp.replica or p.replica in senders or not vs.verify(p):
            return "prepared proof: invalid, duplicate or primary prepare"
        senders.add(p.replica)
    if len(senders) < vs.quorum - 1:
        return f"prepared proof: {len(senders)} prepares, {vs.quorum - 1} needed"
    return None


def checkpoint_proof_error(vs: ValidatorSet, seq: int,
                           checkpoints: tuple[Checkpoint, ...]) -> str | None:
    """Why ``checkpoints`` do not prove a stable checkpoint at ``seq``, or None."""
    if seq == 0:
        return None if not checkpoints else "checkpoint proof given for sequence 0"
    roots = {c.state_root for c in checkpoints}
    senders = {c.replica for c in checkpoints}
    if len(roots) != 1 or any(c.seq != seq for c in checkpoints):
        return "checkpoint proof: checkpoints disagree"
    if len(senders) != len(checkpoints) or not all(vs.verify(c) for c in checkpoints):
        return "checkpoint proof: invalid or duplicate checkpoint"
    if len(senders) < vs.quorum:
        return f"checkpoint proof: {len(senders)} checkpoints, {vs.quorum} needed"
    return None


def view_change_error(vs: ValidatorSet, vc: ViewChange, window: int) -> str | None:
    """Why ``vc`` is not a valid VIEW-CHANGE message, or None."""
    if not vs.verify(vc):
        return "view change: bad signature"
    error = checkpoint_proof_error(vs, vc.stable_seq, vc.checkpoint_proof)
    if error:
        return f"view change: {error}"
    seqs = set()
    for proof in vc.prepared:
        pp = proof.proposal.pre_prepare
        if not vc.stable_seq < pp.seq <= vc.stable_seq + window or pp.seq in seqs:
            return "view change: prepared proof outside the window or repeated"
        if pp.view >= vc.view:
            return "view change: prepared proof from a view not below the new one"
        seqs.add(pp.seq)
        error = prepared_proof_error(vs, proof)
        if error:
            return f"view change: {error}"
    return None


def new_view_blocks(vcs: list[ViewChange] | tuple[ViewChange, ...],
                    primary: int) -> tuple[int, list[Block]]:
    """(min_s, blocks for min_s+1..max_s) that a NEW-VIEW built from ``vcs`` must propose.

    ``vcs`` must already be validated. For each sequence number the block prepared in
    the highest view wins; gaps are filled with null blocks proposed by ``primary``.
    """
    min_s = max(vc.stable_seq for vc in vcs)
    best: dict[int, tuple[int, Block]] = {}
    for vc in vcs:
        for proof in vc.prepared:
            pp = proof.proposal.pre_prepare
            if pp.seq > min_s and (pp.seq not in best or pp.view > best[pp.seq][0]):
                best[pp.seq] = (pp.view, proof.proposal.block)
    max_s = max(best, default=min_s)
    blocks = [best[s][1] if s in best else null_block(s, primary)
              for s in range(min_s + 1, max_s + 1)]
    return min_s, blocks
