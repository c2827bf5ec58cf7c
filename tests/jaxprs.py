"""What a traced program does, read from its jaxpr: evidence about the compiled form that values alone cannot give."""

from __future__ import annotations

import jax
import jax.extend


def scan_stacked_dtypes(jaxpr) -> set:
    """The dtypes of every [T, ...] array a scan in ``jaxpr`` (or nested in it) stacks, step by step: its outputs,
    and the residuals autodiff saves for the backward pass. Not what it carries or reads (a slice of an input costs
    the slice whatever its dtype; writing a step into a bfloat16 buffer is what XLA:CPU does slowly)."""
    dtypes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            dtypes |= {v.aval.dtype for v in eqn.outvars[eqn.params["num_carry"] :]}
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            dtypes |= scan_stacked_dtypes(sub)
    return dtypes
