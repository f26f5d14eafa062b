"""The platform's one cost function: what a generation costs at a model's per-token prices (USD)."""

from __future__ import annotations

# Costs are kept to 1e-10 USD: a single token of the cheapest priced model is still visible, and sums of many
# responses do not accumulate float noise in the rendered JSON.
COST_DIGITS = 10


def generation_cost(
    prompt_tokens: int, completion_tokens: int, input_per_token: float, output_per_token: float
) -> float:
    """prompt_tokens x input price + completion_tokens x output price, rounded to COST_DIGITS."""
    return round(prompt_tokens * input_per_token + completion_tokens * output_per_token, COST_DIGITS)
