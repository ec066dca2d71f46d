"""z-diversity: the spread over z of images made for one caption, and over captions for one z."""

import pytest
import torch
from torch import nn

from lafite.config import ModelConfig
from lafite.metrics.diversity import diversity
from lafite.model.generator import Generator


class Additive(nn.Module):
    """x = a * z-pattern + b * condition-pattern: its two spreads are known in closed form."""

    z_dim = 4

    def __init__(self, z_weight: float, cond_weight: float) -> None:
        super().__init__()
        self.z_weight, self.cond_weight = z_weight, cond_weight

    def forward(self, z, cond, *, truncation_psi=1.0, noise_mode="random"):
        n = z.shape[0]
        from_z = z[:, :1].reshape(n, 1, 1, 1).expand(n, 3, 4, 4)
        from_cond = cond[:, :1].reshape(n, 1, 1, 1).expand(n, 3, 4, 4)
        return 0.1 * (self.z_weight * from_z + self.cond_weight * from_cond)


def test_generator_that_ignores_z_has_zero_z_diversity():
    conditions = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [3.0, 0.0]])
    spread = diversity(Additive(z_weight=0.0, cond_weight=1.0), conditions, draws=5)
    assert spread.z == pytest.approx(0.0, abs=1e-7)
    # std over the three condition values 0.1, -0.1, 0.3 (population)
    assert spread.captions == pytest.approx(torch.tensor([0.1, -0.1, 0.3]).std(correction=0).item(),
                                            rel=1e-5)
    blind = diversity(Additive(z_weight=1.0, cond_weight=0.0), conditions, draws=5)
    assert blind.captions == pytest.approx(0.0, abs=1e-7) and blind.z > 0


def test_diversity_matches_a_direct_computation_on_a_real_generator():
    torch.manual_seed(0)
    cfg = ModelConfig(z_dim=8, w_dim=8, mapping_layers=1, channel_base=256, channel_max=16,
                      cond_dim=8)
    G = Generator(cfg, 16, cond_dim=6).eval()
    conditions = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    spread = diversity(G, conditions, draws=4, seed=7, noise_mode="const")

    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        grid = torch.stack([
            torch.stack([G(z[k : k + 1], conditions[c : c + 1], noise_mode="const")[0]
                         for k in range(4)])
            for c in range(3)
        ]).clamp(-1, 1)
    centred_z = grid - grid.mean(dim=1, keepdim=True)
    centred_c = grid - grid.mean(dim=0, keepdim=True)
    assert spread.z == pytest.approx(centred_z.square().mean(dim=1).sqrt().mean().item(), rel=1e-4)
    assert spread.captions == pytest.approx(
        centred_c.square().mean(dim=0).sqrt().mean().item(), rel=1e-4)
    assert spread == diversity(G, conditions, draws=4, seed=7, noise_mode="const")


def test_diversity_needs_two_draws_and_two_conditions():
    with pytest.raises(ValueError):
        diversity(Additive(1.0, 1.0), torch.ones(3, 2), draws=1)
    with pytest.raises(ValueError):
        diversity(Additive(1.0, 1.0), torch.ones(1, 2), draws=4)
