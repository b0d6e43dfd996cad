"""Fused Triton kernels for training: speed only, the same math as the unfused modules.

* :mod:`pgolf.kernels.softcapped_ce` (``FUSED_CE=1``): tanh softcap + cross-entropy in one pass
  over the logits, forward and backward (R43).
* :mod:`pgolf.kernels.mlp` (``FUSED_MLP=1``): the MLP's up-projection with its relu^2 /
  LeakyReLU^2 epilogue, and in the backward the down-projection's input gradient with the
  activation's derivative (R36).

Both are ``torch.library`` custom ops, so ``torch.compile`` treats them as opaque nodes rather
than tracing into Triton. Triton is optional: these modules import it at the top, and nothing
imports them unless a FUSED_* flag is on (:func:`pgolf.kernels.support.require_fused_kernels`
checks first and says in one line what is missing). On a machine without CUDA they run only
under Triton's interpreter (``TRITON_INTERPRET=1``, set before they are imported), which is how
the CPU tests check them against the unfused code.
"""
