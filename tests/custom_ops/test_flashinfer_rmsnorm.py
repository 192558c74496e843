"""FlashInfer RMSNorm (``flashinfer_rmsnorm``) against ``torch_rmsnorm`` (GPU, needs flashinfer).

FlashInfer scales by the weight before its single rounding, the reference rounds the normalized
value first: bf16/fp16 results may differ by about one unit in the last place.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu
flashinfer = pytest.importorskip("flashinfer")

ad = torch.ops.auto_deploy
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2048), (7, 4096), (2, 9, 5120)], ids=str)
def test_matches_reference(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to("cuda", dtype)
    weight = (torch.rand(shape[-1], generator=gen) + 0.5).to("cuda", dtype)
    out = ad.flashinfer_rmsnorm(x, weight, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(
        out.float(), ad.torch_rmsnorm(x, weight, 1e-6).float(), atol=tol, rtol=tol
    )
