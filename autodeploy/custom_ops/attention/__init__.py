"""Attention ops: canonical ``torch_attention``, GQA helper ``torch_attention_repeat_kv``."""
