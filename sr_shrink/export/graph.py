"""Graph policy: what an exported graph may hold (tensor rank <= 4, ops on the target's allow-list)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SRShrinkError

MAX_RANK = 4

@dataclass
class GraphInfo:
    """What an exported graph holds: op counts, the highest tensor rank, tensors above rank 4, I/O specs."""

    ops: dict[str, int]
    max_rank: int
    high_rank: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)


def check_graph(target: str, graph: GraphInfo) -> dict:
    """Return the check record for ``graph``; raise SRShrinkError if a tensor has rank > 4 or an op is not
    on the ``target``'s allow-list (:attr:`Target.allowed_ops <sr_shrink.export.targets.Target.allowed_ops>`)."""
    if graph.high_rank:
        raise SRShrinkError(f"{target} graph has tensors of rank > {MAX_RANK} (max {graph.max_rank}): "
                            f"{', '.join(graph.high_rank[:5])}; phone delegates reject them.")
    from .targets import get_target  # targets imports the format modules, which import this module

    extra = sorted(set(graph.ops) - get_target(target).allowed_ops)
    if extra:
        raise SRShrinkError(f"{target} graph uses ops outside the mobile allow-list: {', '.join(extra)}.")
    return {"max_rank": graph.max_rank, "rank_ok": True, "ops_allowed": True}
