import pytest
import torch

from advcl_plugin import HighFrequencyView, LowFrequencyView, frequency_mask, high_frequency, low_frequency
from advcl_plugin.core import frequency


def direct_components(x: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (8) written out as in the facts sheet: centred spectrum, distance to (H/2, W/2) < r is low."""
    height, width = x.shape[-2:]
    low_mask = torch.zeros(height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            if ((i - height // 2) ** 2 + (j - width // 2) ** 2) ** 0.5 < radius:
                low_mask[i, j] = 1.0
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    high = torch.fft.ifft2(torch.fft.ifftshift(spectrum * (1 - low_mask), dim=(-2, -1))).real
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * low_mask, dim=(-2, -1))).real
    return high, low


@pytest.mark.parametrize("shape,radius", [((3, 3, 32, 32), 8), ((2, 1, 31, 33), 5), ((1, 3, 96, 96), 24)])
def test_matches_direct_formula(shape, radius):
    x = torch.rand(*shape)
    high, low = direct_components(x, radius)
    assert torch.allclose(high_frequency(x, radius).double(), high, atol=1e-5)
    assert torch.allclose(low_frequency(x, radius).double(), low, atol=1e-5)


def test_components_sum_to_image():
    x = torch.rand(5, 3, 32, 32)
    assert torch.allclose(high_frequency(x) + low_frequency(x), x, atol=1e-5)


def test_mask_definition():
    mask = frequency_mask(32, 32, 8)
    assert mask[16, 16] == 1  # zero frequency is low
    assert mask[16, 16 + 7] == 1 and mask[16, 16 + 8] == 0  # distance 7 < 8, distance 8 is high
    assert int(mask.sum()) == sum(1 for i in range(32) for j in range(32) if ((i - 16) ** 2 + (j - 16) ** 2) ** 0.5 < 8)


def test_shape_dtype_device_and_mean():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    out = high_frequency(x)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device
    # the DC coefficient is removed: each channel of the HFC has zero mean
    assert out.mean(dim=(-2, -1)).abs().max() < 1e-10
    bf16 = high_frequency(x.to(torch.bfloat16))
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.double(), out, atol=0.05)


def test_radius_zero_keeps_everything():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(high_frequency(x, radius=0), x, atol=1e-6)
    assert low_frequency(x, radius=0).abs().max() < 1e-6


def test_differentiable():
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: high_frequency(t, radius=3), (x,))


def test_mask_is_cached_per_size_radius_device():
    frequency._cached_low_pass_mask.cache_clear()
    x = torch.rand(2, 3, 32, 32)
    high_frequency(x, 8)
    low_frequency(x, 8)
    high_frequency(torch.rand(1, 3, 32, 32), 8)
    info = frequency._cached_low_pass_mask.cache_info()
    assert info.misses == 1 and info.hits == 2
    high_frequency(x, 4)
    assert frequency._cached_low_pass_mask.cache_info().misses == 2


def test_view_transforms():
    image = torch.rand(3, 32, 32)
    assert torch.allclose(HighFrequencyView(8)(image), high_frequency(image[None])[0])
    assert torch.allclose(LowFrequencyView(8)(image), low_frequency(image[None])[0])
    with pytest.raises(TypeError, match="ToTensor"):
        HighFrequencyView(8)([1, 2, 3])


def test_rejects_unbatched_input():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        high_frequency(torch.rand(3, 32, 32))
