"""ClusterFit pseudo labels (Sec. 4.2): k-means clusters of a pretrained encoder's features.

Given an encoder ``f_pre`` and an unlabeled dataset, ``compute_features`` embeds every
image, ``cluster_pseudo_labels`` runs faiss k-means on the L2-normalised features for
each cluster count K, and :class:`PseudoLabels` stores the result with the metadata
needed to refuse it for another dataset.

Examples:
    >>> import numpy as np
    >>> from advcl_plugin import PseudoLabels, cluster_pseudo_labels
    >>> features = np.random.default_rng(0).normal(size=(400, 16)).astype("float32")
    >>> labels = cluster_pseudo_labels(features, ks=(2, 10), seed=0)   # {K: (N,) int64}
    >>> pl = PseudoLabels(labels, dataset="toy", num_samples=400, encoder="random")
    >>> pl.as_tensor().shape                                           # (N, n_ks)
    torch.Size([400, 2])
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from advcl_plugin.core.config import KS_ENSEMBLE

__all__ = ["PseudoLabels", "cluster_pseudo_labels", "compute_features"]

#: Metadata given to the authors' reference file, which carries none of its own.
REFERENCE_DATASET = "cifar10-train"
REFERENCE_ENCODER = "AdvCL reference: k-means of ImageNet-pretrained SimCLR features"


def cluster_pseudo_labels(
    features: np.ndarray | Tensor,
    ks: Iterable[int] = KS_ENSEMBLE,
    seed: int = 0,
    niter: int = 20,
    nredo: int = 1,
    use_gpu: bool = False,
) -> dict[int, np.ndarray]:
    """Cluster L2-normalised features with faiss k-means once per K (ClusterFit, Sec. 4.2).

    Args:
        features: (N, d) features of the N images, in dataset order.
        ks: cluster counts K.
        seed: k-means seed (initial centroids), for reproducible labels.
        niter: k-means iterations.
        nredo: k-means restarts (the best objective is kept).
        use_gpu: run faiss on the GPU (needs the ``faiss-gpu`` build).

    Returns:
        ``{K: labels}`` with labels an int64 array of shape (N,), values in 0..K-1.
    """
    from advcl_plugin._optional import require

    faiss = require("faiss", "clusterfit")

    if use_gpu and faiss.get_num_gpus() == 0:
        raise RuntimeError(
            "use_gpu=True but this faiss build sees no GPU: install the GPU build "
            "(docs/index.md, 'GPU k-means') or run k-means on the CPU"
        )
    data = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    if data.ndim != 2:
        raise ValueError(f"features must have shape (N, d), got {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("features contain NaN or infinite values")
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = np.ascontiguousarray(data / np.maximum(norms, 1e-12), dtype=np.float32)
    result: dict[int, np.ndarray] = {}
    for k in ks:
        k = int(k)
        if k < 2 or k > len(data):
            raise ValueError(f"cannot make {k} clusters from {len(data)} samples (need 2 <= K <= N)")
        kmeans = faiss.Kmeans(data.shape[1], k, niter=niter, nredo=nredo, seed=seed, gpu=use_gpu, verbose=False)
        kmeans.train(data)
        _, assignment = kmeans.index.search(data, 1)
        result[k] = assignment[:, 0].astype(np.int64)
    return result


@torch.no_grad()
def compute_features(
    encoder: nn.Module,
    data: Dataset | DataLoader,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Embed every image of ``data`` with ``encoder`` (eval mode, no grad), in order.

    Args:
        encoder: maps (B, C, H, W) images to (B, d) features (or (B, d, 1, 1)).
        data: a dataset whose items are ``image`` or ``(image, ...)`` tuples with tensor
            images, or a DataLoader over such items (it must not shuffle).
        batch_size: batch size when ``data`` is a dataset.
        device: where to run the encoder; default: the encoder's device.
        num_workers: DataLoader workers when ``data`` is a dataset.
        progress: show a tqdm progress bar.

    Returns:
        float32 array of shape (N, d).
    """
    from tqdm.auto import tqdm

    loader = (
        data
        if isinstance(data, DataLoader)
        else DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    )
    if device is None:
        parameter = next(encoder.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        for batch in tqdm(loader, desc="features", disable=not progress):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            output = encoder(images.to(device))
            chunks.append(output.flatten(1).float().cpu())
    finally:
        encoder.train(was_training)
    if not chunks:
        raise ValueError("the dataset is empty")
    return torch.cat(chunks).numpy()


def _cluster_ids(k: int, values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Cluster ids of one K as int64; float arrays are taken only if they hold whole numbers (9.6 is refused,
    never truncated to 9)."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            bad = array[~np.isfinite(array) | (array != np.round(array))][:3]
            raise ValueError(
                f"pseudo labels for K={k} must be whole cluster ids, got {array.dtype} values such as {bad.tolist()}"
            )
    elif array.dtype.kind not in "iu":
        raise ValueError(f"pseudo labels for K={k} must be integer cluster ids, got dtype {array.dtype}")
    return array.astype(np.int64)


@dataclass
class PseudoLabels:
    """Cluster pseudo labels for every sample of one dataset, with their provenance.

    Attributes:
        labels: ``{K: (num_samples,) int64 array}``; -1 marks a sample without a label.
        dataset: name of the dataset they were made for (e.g. ``"cifar10-train"``).
        num_samples: length of that dataset.
        encoder: description of the encoder whose features were clustered.
        extra: further metadata saved with the file.
    """

    labels: dict[int, np.ndarray]
    dataset: str
    num_samples: int
    encoder: str = "unknown"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {int(k): _cluster_ids(k, v) for k, v in self.labels.items()}
        for k, values in self.labels.items():
            if values.shape != (self.num_samples,):
                raise ValueError(f"pseudo labels for K={k} have shape {values.shape}, expected ({self.num_samples},)")
            if values.size and (values.min() < -1 or values.max() >= k):
                raise ValueError(
                    f"pseudo labels for K={k} must lie in 0..{k - 1} (or -1 for none); "
                    f"found values in [{values.min()}, {values.max()}]"
                )

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))

    def check(self, num_samples: int, ks: Sequence[int] | None = None, dataset: str | None = None) -> None:
        """Raise ``ValueError`` unless these labels fit a dataset of ``num_samples`` and hold every K."""
        if num_samples != self.num_samples:
            raise ValueError(
                f"pseudo labels were made for {self.num_samples} samples of {self.dataset!r} "
                f"but the dataset{f' {dataset!r}' if dataset else ''} has {num_samples} samples; "
                "make pseudo labels for this dataset (advcl pseudo-labels) or pick the matching file"
            )
        missing = [k for k in (ks or ()) if int(k) not in self.labels]
        if missing:
            raise ValueError(f"pseudo labels for K={missing} are missing: the file holds K={list(self.ks)}")

    def as_tensor(self, ks: Sequence[int] | None = None) -> Tensor:
        """Labels as an int64 tensor of shape (num_samples, len(ks)), one column per K."""
        ks = tuple(ks) if ks is not None else self.ks
        self.check(self.num_samples, ks)
        return torch.from_numpy(np.stack([self.labels[int(k)] for k in ks], axis=1))

    def subset(self, indices: Sequence[int] | np.ndarray, dataset: str | None = None) -> PseudoLabels:
        """Labels of the samples at ``indices`` (e.g. an exact-pixel subset's source indices)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise ValueError(f"indices must lie in 0..{self.num_samples - 1} to select from {self.dataset!r}")
        return PseudoLabels(
            {k: v[indices] for k, v in self.labels.items()},
            dataset=dataset or f"{self.dataset}[subset of {len(indices)}]",
            num_samples=len(indices),
            encoder=self.encoder,
            extra=dict(self.extra),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` with arrays ``k{K}`` and a JSON ``meta`` entry (atomically); returns the path."""
        from advcl_plugin._io import atomic_savez

        meta = {
            "dataset": self.dataset,
            "num_samples": self.num_samples,
            "ks": list(self.ks),
            "encoder": self.encoder,
            **self.extra,
        }
        arrays = {f"k{k}": v for k, v in self.labels.items()}
        return atomic_savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        num_samples: int | None = None,
        ks: Sequence[int] | None = None,
        split: str = "train",
    ) -> PseudoLabels:
        """Read a file written by :meth:`save`, or the authors' reference file.

        The reference file (``advcl_reference_pseudo_labels_cifar10.npz``: arrays ``k{K}``
        for the 50,000 CIFAR-10 train images and ``test_k{K}`` for the 10,000 test images)
        has no metadata; it is described as ``cifar10-train`` (or ``cifar10-test`` with
        ``split="test"``).  When ``num_samples`` or ``ks`` are given they are checked.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pseudo-label file not found: {path}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        try:
            labels, dataset, count, encoder, extra = _read_label_archive(path, split)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
            if isinstance(error, ValueError) and str(error).startswith(str(path)):
                raise
            raise ValueError(
                f"{path} is not a readable pseudo-label file (an .npz written by `advcl pseudo-labels`, or the "
                f"authors' reference file): {type(error).__name__}: {error}. Pseudo-label files are data: "
                "files that need pickle are refused"
            ) from None
        result = cls(labels, dataset=dataset, num_samples=count, encoder=encoder, extra=extra)
        if num_samples is not None or ks is not None:
            result.check(result.num_samples if num_samples is None else num_samples, ks)
        return result

    def __repr__(self) -> str:
        return (
            f"PseudoLabels(dataset={self.dataset!r}, num_samples={self.num_samples}, "
            f"ks={list(self.ks)}, encoder={self.encoder!r})"
        )


def _read_label_archive(path: Path, split: str) -> tuple[dict[int, np.ndarray], str, int, str, dict]:
    """Arrays and metadata of a pseudo-label ``.npz`` (``allow_pickle=False``: files are data)."""
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if "meta" in keys:
            if split != "train":
                raise ValueError(f"{path} holds one split only; split={split!r} is not available")
            meta = json.loads(str(archive["meta"]))
            labels = {int(k[1:]): archive[k] for k in keys if k.startswith("k") and k[1:].isdigit()}
            dataset, count, encoder = meta.pop("dataset"), int(meta.pop("num_samples")), meta.pop("encoder")
            meta.pop("ks", None)
            extra = meta
        else:
            prefix = "k" if split == "train" else "test_k"
            labels = {
                int(k[len(prefix) :]): archive[k] for k in keys if k.startswith(prefix) and k[len(prefix) :].isdigit()
            }
            if not labels:
                raise ValueError(f"{path} holds no pseudo-label arrays named {prefix}<K>")
            count = len(next(iter(labels.values())))
            dataset = f"cifar10-{split}" if count in (50000, 10000) else f"unknown ({path.name})"
            encoder, extra = REFERENCE_ENCODER, {"source": str(path.name)}
    return labels, dataset, count, encoder, extra
