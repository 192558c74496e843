"""Token gather ops (logits only for the tokens that are sampled)."""
