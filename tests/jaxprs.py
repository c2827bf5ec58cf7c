"""What a traced program does, read from its jaxpr: evidence about the compiled form that values alone cannot give."""

from __future__ import annotations

import jax
import jax.extend


def scan_stacked_dtypes(jaxpr) -> set:
    """The dtypes of every [T, ...] array a scan in ``jaxpr`` (or nested in it) slices or stacks: inputs, outputs
    and the residuals autodiff saves for the backward pass; not its constants or carries (such as the parameters'
    cotangent sums), which no step writes into."""
    dtypes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            carried = eqn.params["num_consts"] + eqn.params["num_carry"]
            stacked = (*eqn.invars[carried:], *eqn.outvars[eqn.params["num_carry"] :])
            dtypes |= {v.aval.dtype for v in stacked}
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            dtypes |= scan_stacked_dtypes(sub)
    return dtypes
