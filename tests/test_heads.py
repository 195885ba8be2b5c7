import pytest
import torch
import torch.nn.functional as F

from advcl_plugin import ProjectionHead, PseudoLabelHeads, pseudo_label_loss


def test_projection_head_layout():
    head = ProjectionHead(32)
    kinds = [type(m) for m in head]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    assert head[0].in_features == 32 and head[0].out_features == 32 and head[3].out_features == 128
    assert head(torch.randn(4, 32)).shape == (4, 128)


def test_loss_matches_direct_formula():
    heads = PseudoLabelHeads(16, ks=(2, 10, 50))
    logits = heads(torch.randn(12, 16))
    labels = torch.stack([torch.randint(0, k, (12,)) for k in (2, 10, 50)], dim=1)
    labels[0, 1] = -1
    labels[3, 2] = -1
    per_head_mean = []
    per_head_sum = []
    for i, lg in enumerate(logits):
        keep = labels[:, i] != -1
        ce = -torch.log_softmax(lg[keep], 1)[torch.arange(int(keep.sum())), labels[keep, i]]
        per_head_mean.append(ce.mean())
        per_head_sum.append(ce.sum())
    torch.testing.assert_close(heads.loss(logits, labels), torch.stack(per_head_mean).mean())
    torch.testing.assert_close(heads.loss(logits, labels, "sum"), torch.stack(per_head_sum).mean())
    # the authors' forms: nn.CrossEntropyLoss(ignore_index=-1) / 5 summed, and size_average=False
    torch.testing.assert_close(
        heads.loss(logits, labels),
        sum(F.cross_entropy(lg, labels[:, i], ignore_index=-1) for i, lg in enumerate(logits)) / 3,
    )


def test_all_ignored_head_contributes_zero():
    logits = [torch.randn(4, 2, requires_grad=True)]
    loss = pseudo_label_loss(logits, torch.full((4, 1), -1))
    assert loss.item() == 0.0
    loss.backward()


def test_errors():
    heads = PseudoLabelHeads(8, ks=(2, 10))
    logits = heads(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        heads.loss(logits, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        heads.loss(logits, torch.zeros(3, 2, dtype=torch.long), reduction="none")
    with pytest.raises(ValueError, match="cluster counts"):
        PseudoLabelHeads(8, ks=(1,))
