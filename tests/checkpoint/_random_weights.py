"""Random values for every float tensor of a model, so a value loaded under a wrong key cannot go unnoticed."""
import torch


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Norm scales and running variances in [0.5, 1.5), other vectors ~ N(0, 0.1), matrices / kernels ~ N(0,
    1/fan_in): random norm statistics included. Returns the module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if t.dim() == 1 and (k.endswith("running_var") or k.endswith("weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / max(1, t[0].numel())) ** 0.5)
    return module.eval()
