"""``advcl pseudo-labels``: ClusterFit, k-means pseudo labels from any encoder's features (Sec. 4.2)."""

from __future__ import annotations

from pathlib import Path

import torch

from advcl_plugin.app.artifacts import load_encoder
from advcl_plugin.app.data import load_split
from advcl_plugin.app.recipe import DataConfig
from advcl_plugin.core.clusterfit import PseudoLabels, cluster_pseudo_labels, compute_features
from advcl_plugin.data.transforms import eval_transform

__all__ = ["make_pseudo_labels"]


def make_pseudo_labels(
    encoder: str | Path,
    data: DataConfig,
    ks: list[int],
    output: str | Path,
    *,
    arch: str | None = None,
    width: int = 64,
    route: str | None = None,
    source_format: str = "auto",
    input_normalization: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> PseudoLabels:
    """Embed the train split of ``data`` with ``encoder`` and k-means its features per K; write ``output``."""
    backbone, info = load_encoder(
        encoder, arch=arch, width=width, route=route, source_format=source_format,
        input_normalization=input_normalization,
    )  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_split(data, "train")
    size = image_size or data.image_size
    dataset = dataset.with_transform(eval_transform(size if size and size != dataset.image_size else None))
    features = compute_features(backbone.to(device), dataset, batch_size=batch_size, progress=progress)
    labels = cluster_pseudo_labels(features, ks, seed=seed)
    description = (
        f"{info.get('method', 'external')} {info.get('arch')} ({Path(str(encoder)).name}, route {info.get('route')})"
    )
    result = PseudoLabels(
        labels, dataset=dataset.identity, num_samples=len(dataset), encoder=description, extra={"seed": seed}
    )
    result.save(output)
    return result
