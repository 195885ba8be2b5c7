import numpy as np
import pytest
import torch

from advcl_plugin.data import AdvCLViews, IndexedDataset, eval_transform, find_offline_data_dir, load_dataset


def test_offline_exact_subsets(data_dir):
    train = load_dataset("cifar10-offline", "train", data_dir=data_dir)
    test = load_dataset("cifar10-offline", "test", data_dir=data_dir)
    assert (len(train), len(test)) == (5438, 1017)
    assert train.images.shape == (5438, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.split.name == "cifar10-train" and train.split.size == 50000
    assert train.source_index[0] == 0 and train.source_index[-1] == 41016
    assert train.class_names[0] == "airplane" and train.num_classes == 10
    assert test.identity == "cifar10-offline/test"  # a subset, not the whole split
    c100 = load_dataset("cifar100-offline", "train", data_dir=data_dir)
    assert len(c100) == 1117 and c100.num_classes == 100 and c100.split.name == "cifar100-train"


def test_full_jpeg_copy_matches_exact_pixels(data_dir):
    jpeg = load_dataset("cifar10-jpeg-offline", "test", data_dir=data_dir)
    exact = load_dataset("cifar10-offline", "test", data_dir=data_dir)
    assert len(jpeg) == 10000 and jpeg.identity == "cifar10-test"
    decoded = jpeg.images[exact.source_index].astype(np.float32)
    error = np.abs(decoded - exact.images.astype(np.float32)).mean()
    assert error < 10  # JPEG q75: about 5.8/255 on average; a misaligned pair gives about 70
    assert np.array_equal(jpeg.labels[exact.source_index], exact.labels)


def test_items_and_views(data_dir):
    dataset = load_dataset("cifar10-offline", "train", data_dir=data_dir, transform=AdvCLViews(32))
    (tau1, tau2, x), label, index = IndexedDataset(dataset)[5]
    assert index == 5 and label == dataset.labels[5]
    for view in (tau1, tau2, x):
        assert view.shape == (3, 32, 32) and view.min() >= 0 and view.max() <= 1
    plain = dataset.with_transform(eval_transform())
    image, _ = plain[5]
    assert torch.equal(image, torch.from_numpy(dataset.images[5]).permute(2, 0, 1).float() / 255)
    assert dataset.transform is not None  # the original keeps its transform


def test_missing_data_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVCL_DATA_DIR", raising=False)
    assert find_offline_data_dir() is None
    with pytest.raises(FileNotFoundError, match="ADVCL_DATA_DIR"):
        load_dataset("cifar10-offline")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10-offline", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", "val")


def test_torchvision_layout(tmp_path, data_dir, monkeypatch):
    """A CIFAR-10 folder in torchvision's layout (written from the offline copy) loads without download."""
    import pickle

    exact = load_dataset("cifar10-offline", "test", data_dir=data_dir)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as handle:
        data = exact.images.transpose(0, 3, 1, 2).reshape(len(exact), -1)
        pickle.dump({"data": data, "labels": exact.labels.tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": exact.class_names}, handle)
    import torchvision

    # our file is not byte-identical to the official one, so skip torchvision's md5 checks
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    loaded = load_dataset("cifar10", "test", root=tmp_path)
    assert np.array_equal(loaded.images, exact.images) and np.array_equal(loaded.labels, exact.labels)
    assert loaded.split.name == "cifar10-test"
