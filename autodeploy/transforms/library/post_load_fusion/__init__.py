"""Transforms of stage post_load_fusion: GEMM fusion, fused norms, kernel-backed ops.

They run after ``load_weights``, so they see real weights on the run device. Kernel backends
(``backend: auto`` by default) pick Triton on CUDA and leave the reference ops in place on other
devices; see ``_backends.py`` for the rules.
"""
