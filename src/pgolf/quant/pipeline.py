"""The export quantization a config asks for: policy, then GPTQ rounding, then LQER corrections.

:func:`quantize_for_export` is the one place training (``pgolf train``) turns a float state dict
into the QuantizedState it writes: the ``PGOLF_QUANT_SCHEME`` policy, GPTQ-rounded wherever a
calibration Hessian exists (``USE_GPTQ``; every intN linear and the tied embedding), then, with
``LQER_ENABLED``, low-rank corrections on the worst ``LQER_TOP_K`` intN tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from pgolf.config import QuantConfig
from pgolf.errors import PgolfError
from pgolf.quant.int8 import QuantizedState
from pgolf.quant.lqer import add_lqer
from pgolf.quant.policy import quantize_state_dict_policy


def quantize_for_export(
    state_dict: Mapping[str, Tensor], q: QuantConfig, hessians: Mapping[str, Tensor] | None = None,
    *, policy: str | None = None, gptq: bool | None = None, lqer: bool | None = None,
) -> QuantizedState:
    """Quantize ``state_dict`` as ``q`` says (``policy``/``gptq``/``lqer`` override its fields)."""
    gptq = q.gptq_enabled if gptq is None else gptq
    lqer = q.lqer_enabled if lqer is None else lqer
    if gptq and not hessians:
        raise PgolfError("GPTQ is on but no calibration Hessians were collected")
    quantized = quantize_state_dict_policy(state_dict, q.scheme if policy is None else policy, hessians, gptq=gptq)
    if lqer:
        quantized = add_lqer(
            quantized, state_dict, q.lqer_rank, q.lqer_top_k, q.lqer_factor_bits, q.lqer_asym_enabled, q.lqer_asym_group
        )
    return quantized
