import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from advcl_plugin import PseudoLabels, cluster_pseudo_labels, compute_features
from advcl_plugin.data import align_pseudo_labels, load_dataset


def blobs(n_per=60, k=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(k, dim) * 10  # orthogonal directions: separated after L2 normalisation
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_recovers_separated_clusters_and_is_deterministic():
    x, truth = blobs()
    labels = cluster_pseudo_labels(x, ks=(4, 8), seed=3)
    assert set(labels) == {4, 8}
    assert labels[4].dtype == np.int64 and labels[4].shape == (240,)
    # one cluster per blob: each true blob maps to exactly one cluster id
    assert all(len(set(labels[4][truth == c])) == 1 for c in range(4))
    assert len(set(labels[4])) == 4 and labels[8].max() < 8
    again = cluster_pseudo_labels(torch.from_numpy(x), ks=(4, 8), seed=3)
    assert all(np.array_equal(labels[k], again[k]) for k in (4, 8))


def test_clusters_normalised_features():
    # two directions, very different norms: k-means on L2-normalised features splits by direction
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0]) * rng.uniform(1, 100, size=(50, 1))
    b = np.array([0.0, 1.0]) * rng.uniform(1, 100, size=(50, 1))
    labels = cluster_pseudo_labels(np.concatenate([a, b]) + rng.normal(0, 0.01, (100, 2)), ks=(2,))[2]
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[-1]


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 <= K <= N"):
        cluster_pseudo_labels(np.random.rand(5, 3), ks=(10,))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        cluster_pseudo_labels(np.random.rand(5), ks=(2,))
    with pytest.raises(ValueError, match="NaN"):
        cluster_pseudo_labels(np.full((5, 3), np.nan), ks=(2,))


def test_compute_features_in_order():
    data = TensorDataset(torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(), torch.zeros(10))
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    encoder.train()
    features = compute_features(encoder, data, batch_size=3, progress=False)
    expected = encoder(data.tensors[0]).detach().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5)
    assert encoder.training  # mode restored


def test_save_load_roundtrip_and_checks(tmp_path):
    labels = {2: np.array([0, 1, 1, 0, -1]), 10: np.array([3, 9, 0, 1, 2])}
    pl = PseudoLabels(labels, dataset="toy/train", num_samples=5, encoder="resnet", extra={"seed": 4})
    path = pl.save(tmp_path / "labels.npz")
    loaded = PseudoLabels.load(path)
    assert loaded.dataset == "toy/train" and loaded.num_samples == 5 and loaded.encoder == "resnet"
    assert loaded.extra == {"seed": 4} and loaded.ks == (2, 10)
    assert torch.equal(loaded.as_tensor(), torch.tensor([[0, 3], [1, 9], [1, 0], [0, 1], [-1, 2]]))
    with pytest.raises(ValueError, match="made for 5 samples .* has 6 samples"):
        PseudoLabels.load(path, num_samples=6)
    with pytest.raises(ValueError, match=r"K=\[50\] are missing"):
        PseudoLabels.load(path, ks=(2, 50))
    with pytest.raises(ValueError, match="must lie in 0..1"):
        PseudoLabels({2: np.array([0, 2])}, dataset="x", num_samples=2)
    with pytest.raises(FileNotFoundError):
        PseudoLabels.load(tmp_path / "missing.npz")
    sub = loaded.subset([4, 0])
    assert sub.num_samples == 2 and list(sub.labels[10]) == [2, 3]


def test_reference_file_aligns_with_exact_subset(data_dir):
    reference = PseudoLabels.load(data_dir / "advcl_reference_pseudo_labels_cifar10.npz", ks=(2, 10, 50, 100, 500))
    assert reference.num_samples == 50000 and reference.dataset == "cifar10-train"
    test_labels = PseudoLabels.load(data_dir / "advcl_reference_pseudo_labels_cifar10.npz", split="test")
    assert test_labels.num_samples == 10000
    subset = load_dataset("cifar10-offline", "train", data_dir=data_dir)
    aligned = align_pseudo_labels(reference, subset)
    assert aligned.num_samples == len(subset) == 5438

    # alignment by source index is what makes clusters agree with the true classes
    def purity(clusters, classes):
        return sum(np.bincount(classes[clusters == c]).max() for c in np.unique(clusters)) / len(classes)

    assert purity(aligned.labels[10], subset.labels) > 0.45
    shuffled = reference.subset(np.arange(len(subset)))  # wrong alignment: first 5,438 official rows
    assert purity(shuffled.labels[10], subset.labels) < 0.35
    with pytest.raises(ValueError, match="do not match"):
        align_pseudo_labels(reference.subset(np.arange(100), dataset="other"), subset)
