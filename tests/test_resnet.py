import torch

from advcl_plugin import cifar_resnet18


def test_shapes_and_stem():
    for width, dim in ((16, 128), (64, 512)):
        net = cifar_resnet18(width=width)
        assert net.feature_dim == dim
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    net = cifar_resnet18()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    # the standard CIFAR ResNet-18 has 11.17M parameters
    assert abs(sum(p.numel() for p in net.parameters()) - 11_168_832) < 1000


def test_spatial_resolution_is_kept_in_the_stem():
    net = cifar_resnet18(width=8)
    stem = net.relu(net.bn1(net.conv1(torch.rand(1, 3, 32, 32))))
    assert stem.shape[-2:] == (32, 32)
    assert net.layer4(net.layer3(net.layer2(net.layer1(stem)))).shape[-2:] == (4, 4)
