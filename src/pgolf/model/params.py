"""Which parameters are "control tensors": small gains and mixes kept in fp32 and given to Adam.

The reference names them by substring (``CONTROL_TENSOR_NAME_PATTERNS``, overridable by that
environment variable); the same list decides the fp32 passthrough in the int8 export.
"""

from __future__ import annotations

import os

DEFAULT_CONTROL_PATTERNS = (
    "attn_scale,attn_scales,mlp_scale,mlp_scales,resid_mix,resid_mixes,q_gain,skip_weight,skip_weights"
    # Record techniques' small gates and mixes (none exists in the reference model), as R44 lists them.
    ",skip_gates,parallel_post_lambdas,parallel_resid_lambdas,attn_gate,smear,vr_lambda,ve_layer_scales"
)


def control_tensor_patterns() -> tuple[str, ...]:
    """Read at call time, so an environment override set before a run takes effect."""
    raw = os.environ.get("CONTROL_TENSOR_NAME_PATTERNS", DEFAULT_CONTROL_PATTERNS)
    return tuple(p for p in raw.split(",") if p)


def is_control_tensor(name: str) -> bool:
    return any(pattern in name for pattern in control_tensor_patterns())
