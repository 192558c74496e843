"""Rotary position embedding ops (rotate-half, complex frequencies, interleaved pairs)."""
