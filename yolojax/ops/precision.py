"""The precision that reductions, decoding and the loss compute in."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """float32 for bfloat16/float16/float32 inputs, float64 where any input is float64
    (under ``jax_enable_x64``; without it JAX canonicalises float64 to float32).

    Mixed-precision models keep statistics, box decoding and the loss in float32; a model
    built with ``dtype=param_dtype=jnp.float64`` (under ``jax_enable_x64``) carries float64
    through them, which the parallel equivalence tests use to separate implementation errors
    from float32 rounding.
    """
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)
