"""Several ranks: process groups, the launcher (spawn or torchrun), and the rank-0 / worker
step protocol.

Rank 0 is the caller's process: it owns the scheduler, sampler and tokenizer. Each step it
broadcasts the plain batch description (the ``nest_sequences`` inputs) over a gloo control
group; every rank lays the batch out and runs the same sharded graph; only rank 0 samples.
"""

from .process_group import DistContext, launched_by_torchrun

__all__ = ["DistContext", "launched_by_torchrun"]
