import pytest
import torch
import torch.nn.functional as F

from advcl_plugin.core.pixels import NormalizedEncoder, normalize, random_padded_crop, unnormalize


def test_normalize_roundtrip_and_encoder():
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    x = torch.rand(4, 3, 8, 8)
    z = normalize(x, mean, std)
    torch.testing.assert_close(z[:, 1], (x[:, 1] - 0.4822) / 0.2435)
    torch.testing.assert_close(unnormalize(z, mean, std), x)
    encoder = NormalizedEncoder(torch.nn.Identity(), mean, std)  # the wrapped encoder sees normalised images
    torch.testing.assert_close(encoder(x), z)


def test_padded_crop_is_a_shift_of_the_zero_padded_image():
    x = torch.rand(64, 3, 8, 8)
    out = random_padded_crop(x, padding=2, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert matches, i
        shifts.add(matches[0])
    assert len(shifts) > 15  # all 25 shifts are possible; 64 draws hit most of them
    assert random_padded_crop(x, padding=0) is x


@pytest.mark.parametrize("padding", [1, 4])
def test_padded_crop_keeps_pixel_range(padding):
    x = torch.rand(5, 3, 32, 32)
    out = random_padded_crop(x, padding)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_evaluation_subset_is_evenly_spaced_and_deterministic():
    from torch.utils.data import DataLoader, TensorDataset

    from advcl_plugin.evaluation.robustness import evaluation_subset

    labels = torch.arange(10).repeat_interleave(10)  # stored class by class, like an ImageFolder
    loader = DataLoader(TensorDataset(torch.zeros(100, 1), labels), batch_size=7)
    subset = evaluation_subset(loader, 10)
    picked = torch.cat([batch[1] for batch in subset])
    assert len(picked) == 10 and sorted(set(picked.tolist())) == list(range(10))  # every class, not only class 0
    assert torch.equal(picked, torch.cat([batch[1] for batch in evaluation_subset(loader, 10)]))
    assert evaluation_subset(loader, None) is loader and evaluation_subset(loader, 500) is loader
    with pytest.raises(ValueError, match="positive"):
        evaluation_subset(loader, -1)
