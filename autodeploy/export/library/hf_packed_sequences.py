"""HF mask builders must not look for packed sequences in ``position_ids``.

With ``sdpa``/``eager`` attention, transformers inspects position ids to detect several
sequences packed into one row and builds a data-dependent mask for them. Our exported graph sees
one sequence per row (packing is handled later by the cached attention kernels), so the check
only adds untraceable ops.
"""

from ..interface import ExportPatch, ExportPatchRegistry


@ExportPatchRegistry.register("hf_packed_sequences")
class HfPackedSequences(ExportPatch):
    def apply(self) -> None:
        from transformers import masking_utils

        self._module = masking_utils
        self._original = getattr(masking_utils, "find_packed_sequence_indices", None)
        if self._original is not None:
            masking_utils.find_packed_sequence_indices = lambda *args, **kwargs: None

    def revert(self) -> None:
        if self._original is not None:
            self._module.find_packed_sequence_indices = self._original
