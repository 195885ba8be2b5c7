"""The device-side views (data.views: device) follow the CPU views' distributions."""

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from advcl_plugin.data import load_dataset
from advcl_plugin.data.device_views import (
    DeviceAdvCLViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    padded_random_crop,
    sample_crop_boxes,
)
from advcl_plugin.data.transforms import AdvCLViews


@pytest.fixture(scope="module")
def images(data_dir):
    """512 real CIFAR-10 images (exact pixels) as PIL images and as one uint8 batch."""
    train = load_dataset("cifar10-offline", "train", data_dir=str(data_dir))
    pil = [train.image(i) for i in range(512)]
    batch = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in pil])
    return pil, batch


@pytest.mark.parametrize(
    "ours,theirs,factor",
    [
        (adjust_brightness, F.adjust_brightness, 1.3),
        (adjust_contrast, F.adjust_contrast, 0.7),
        (adjust_saturation, F.adjust_saturation, 1.4),
        (adjust_hue, F.adjust_hue, 0.08),
        (adjust_hue, F.adjust_hue, -0.1),
    ],
)
def test_colour_adjustments_equal_torchvisions(ours, theirs, factor):
    x = torch.rand(6, 3, 16, 16)
    expected = torch.stack([theirs(image, factor) for image in x])
    torch.testing.assert_close(ours(x, torch.full((6,), factor)), expected, atol=2e-5, rtol=0)


def test_crop_boxes_follow_torchvisions_sampler():
    n, scale, ratio = 20_000, (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(n, 32, 32, scale, ratio, torch.Generator().manual_seed(0), torch.device("cpu"))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all())
    torch.manual_seed(0)
    reference = torch.tensor([T.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), scale, ratio) for _ in range(n)])
    rh, rw = reference[:, 2].float(), reference[:, 3].float()
    for ours, theirs in (
        (w * h / 1024, rw * rh / 1024),
        (w / h, rw / rh),
        (boxes[:, 0] + w / 2, reference[:, 1] + rw / 2),
    ):
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert float(torch.quantile(ours, q)) == pytest.approx(
                float(torch.quantile(theirs, q)), abs=0.03 * float(theirs.mean()) + 0.02
            )


def test_padded_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    crops = padded_random_crop(x, 2, torch.Generator().manual_seed(0))
    assert crops.shape == x.shape
    for crop, image in zip(crops, x):  # each crop is a window of the zero-padded image
        padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
        assert any(torch.equal(crop, padded[:, i : i + 8, j : j + 8]) for i in range(5) for j in range(5))


def _statistics(views: torch.Tensor) -> dict[str, float]:
    gray = (views[:, 0] == views[:, 1]).flatten(1).all(1) & (views[:, 1] == views[:, 2]).flatten(1).all(1)
    saturation = (views.max(1).values - views.min(1).values).mean((1, 2))
    return {
        "grayscale rate": float(gray.float().mean()),
        "mean brightness": float(views.mean()),
        "brightness spread": float(views.mean((1, 2, 3)).std()),
        "mean saturation": float(saturation.mean()),
        "contrast": float(views.std((1, 2, 3)).mean()),
    }


def test_views_match_the_cpu_views_in_distribution(images):
    pil, batch = images
    torch.manual_seed(0)
    cpu_views = AdvCLViews(32)
    cpu = [cpu_views(image) for image in pil * 2]
    cpu_tau = torch.stack([v[0] for v in cpu] + [v[1] for v in cpu])
    cpu_original = torch.stack([v[2] for v in cpu])
    generator = torch.Generator().manual_seed(0)
    device = DeviceAdvCLViews(32)
    produced = [device(batch, generator) for _ in range(2)]
    tau = torch.cat([p[0] for p in produced] + [p[1] for p in produced])
    original = torch.cat([p[2] for p in produced])
    assert tau.shape == cpu_tau.shape and original.shape == cpu_original.shape
    ours, theirs = _statistics(tau), _statistics(cpu_tau)
    assert ours["grayscale rate"] == pytest.approx(0.2, abs=0.03) and theirs["grayscale rate"] == pytest.approx(
        0.2, abs=0.03
    )
    for name in ("mean brightness", "brightness spread", "mean saturation", "contrast"):
        assert ours[name] == pytest.approx(theirs[name], rel=0.06), name
    # the original view: same padding share (zero rows/columns at the border), same flip rate
    pad_ours = float((original.sum(1) == 0).float().mean())
    pad_theirs = float((cpu_original.sum(1) == 0).float().mean())
    assert pad_ours == pytest.approx(pad_theirs, rel=0.15, abs=0.01)
    source = torch.cat([batch.float() / 255] * 2)
    flipped = (original[..., 12:20, 12:20] - source.flip(-1)[..., 12:20, 12:20]).abs().flatten(1).mean(1) < (
        original[..., 12:20, 12:20] - source[..., 12:20, 12:20]
    ).abs().flatten(1).mean(1)
    assert float(flipped.float().mean()) == pytest.approx(0.5, abs=0.06)


def test_same_generator_same_views_and_uint8_only(images):
    _, batch = images
    views = DeviceAdvCLViews(32)
    first = views(batch[:16], torch.Generator().manual_seed(3))
    second = views(batch[:16], torch.Generator().manual_seed(3))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="uint8"):
        views(batch[:16].float(), torch.Generator())


def test_recipe_key_selects_the_device_pipeline(data_dir):
    """data.views: device: the loader yields uint8 images and the module makes the views."""
    from advcl_plugin.app.data import pretraining_data
    from advcl_plugin.app.lightning import AdvCLPretrainModule
    from advcl_plugin.app.recipe import load_recipe

    recipe = load_recipe("demo", [f"data.data_dir={data_dir}", "data.views=device", "data.limit=64", "model.width=8",
                                  "method_kwargs.steps=1"])  # fmt: skip
    module = AdvCLPretrainModule(recipe.to_dict())
    dataset, labels = pretraining_data(recipe.data, recipe.pseudo_labels, module.pseudo_label_ks)
    image, _, index = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and index == 3
    module.set_pseudo_labels(labels)
    module.log = module.log_dict = lambda *a, **k: None  # no trainer attached
    batch = (torch.stack([dataset[i][0] for i in range(8)]), torch.zeros(8, dtype=torch.long), torch.arange(8))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="data.views"):
        load_recipe("demo", ["data.views=gpu"])
