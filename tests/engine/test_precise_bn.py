"""engine/precise_bn.py against fvcore's update_bn_stats (what detectron2's PreciseBN hook runs)."""
import copy

import pytest
import torch
from fvcore.nn.precise_bn import update_bn_stats as fvcore_update_bn_stats
from torch import nn

from resnet_backbone.engine.precise_bn import get_bn_modules, update_bn_stats
from resnet_backbone.layers import FrozenBatchNorm2d


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=0.3)
        self.fc = nn.Linear(4, 5)
        self.bn1d = nn.BatchNorm1d(5)
        self.frozen = FrozenBatchNorm2d(4)
        self.eval_bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.eval_bn(self.frozen(torch.relu(self.bn(self.conv(x)))))
        return self.bn1d(self.fc(y.mean(dim=(2, 3))))


@pytest.mark.parametrize("sizes", [(4, 4, 4, 4, 4), (2, 7, 3, 5, 2)])
def test_statistics_equal_fvcore(sizes):
    """Population mean / variance over batches of equal and of different sizes (fvcore weights each batch by its
    size and undoes Bessel's correction); BatchNorm layers in eval mode and FrozenBN are left alone."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.fill_(5.0)  # what the moving average held: replaced, not averaged with
    net.train()
    net.eval_bn.eval()
    batches = [torch.randn(n, 3, 9, 9) * 2 + 0.5 for n in sizes]
    ours, ref = copy.deepcopy(net), copy.deepcopy(net)
    assert update_bn_stats(ours, iter(batches), num_iters=len(batches)) == 2
    fvcore_update_bn_stats(ref, batches, num_iters=len(batches))
    a, b = ours.state_dict(), ref.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(a["bn.running_mean"], net.state_dict()["bn.running_mean"])
    for k in ("eval_bn.running_mean", "eval_bn.running_var", "frozen.running_mean"):
        assert torch.equal(a[k], net.state_dict()[k]), k
    assert ours.bn.momentum == 0.3
    # the estimate is the statistics of everything the layer normalised, computed directly
    with torch.no_grad():
        feats = torch.cat([ours.conv(x).permute(1, 0, 2, 3).reshape(4, -1) for x in batches], dim=1).double()
    torch.testing.assert_close(a["bn.running_mean"].double(), feats.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["bn.running_var"].double(), feats.var(1, unbiased=False), rtol=1e-5, atol=1e-6)


def test_only_training_bn_layers_and_a_short_loader_is_an_error():
    net = Net().train()
    net.eval_bn.eval()
    assert [id(m) for m in get_bn_modules(net)] == [id(net.bn), id(net.bn1d)]
    assert update_bn_stats(net.eval(), iter([torch.randn(2, 3, 9, 9)]), 1) == 0  # nothing in training mode
    with pytest.raises(ValueError, match="TEST.PRECISE_BN.NUM_ITER is 3 but the loader gave only 1 batches"):
        update_bn_stats(net.train(), iter([torch.randn(2, 3, 9, 9)]), 3)
