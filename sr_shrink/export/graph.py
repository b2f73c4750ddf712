"""Graph policy: what an exported graph may hold (tensor rank <= 4, ops on the target's allow-list)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SRShrinkError

MAX_RANK = 4

# Ops each target's graph may hold; anything else means the wrapper leaked an op a phone runtime may lack.
ALLOWED_OPS = {
    "onnx": {"Conv", "ConvTranspose", "Relu", "Add", "Clip", "DepthToSpace", "Transpose", "Cast", "QuantizeLinear",
             "DequantizeLinear"},
    "coreml": {"const", "cast", "conv", "conv_transpose", "relu", "add", "clip", "pixel_shuffle", "depth_to_space",
               "transpose", "constexpr_affine_dequantize", "constexpr_lut_to_dense",
               "constexpr_blockwise_shift_scale"},
    "tflite": {"CONV_2D", "TRANSPOSE_CONV", "ADD", "MUL", "RELU_0_TO_1", "DEPTH_TO_SPACE", "RESHAPE", "TRANSPOSE",
               "QUANTIZE", "DEQUANTIZE"},
}


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
    on the ``target``'s allow-list."""
    if graph.high_rank:
        raise SRShrinkError(f"{target} graph has tensors of rank > {MAX_RANK} (max {graph.max_rank}): "
                            f"{', '.join(graph.high_rank[:5])}; phone delegates reject them.")
    extra = sorted(set(graph.ops) - ALLOWED_OPS[target])
    if extra:
        raise SRShrinkError(f"{target} graph uses ops outside the mobile allow-list: {', '.join(extra)}.")
    return {"max_rank": graph.max_rank, "rank_ok": True, "ops_allowed": True}
