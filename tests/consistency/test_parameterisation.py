"""The consistency parameterisation: the boundary condition holds exactly."""

import pytest
import torch

from diffspeed.distill.consistency import (
    Boundary,
    ConsistencyDenoiser,
    curriculum,
    karras_grid,
    timestep_grid,
)
from diffspeed.errors import ConfigError


@pytest.mark.parametrize("sigma_kind", ["float", "float32", "float64"])
def test_boundary_condition_is_exact(tiny_teacher, sigma_kind):
    f = ConsistencyDenoiser(tiny_teacher)
    x = torch.randn(5, 1, 8, 8) * 3
    smin = tiny_teacher.sigma_min
    sigma = {
        "float": smin,
        "float32": torch.full((5,), smin, dtype=torch.float32),
        "float64": torch.full((5,), smin, dtype=torch.float64),
    }[sigma_kind]
    y = torch.randint(0, 10, (5,))
    with torch.no_grad():
        out = f(x, sigma, class_labels=y)
        inner = tiny_teacher(x, sigma, class_labels=y)
    assert torch.equal(out, x)  # bit-exact, not approximately
    assert not torch.equal(inner, x)  # the network itself does not satisfy it


def test_scalings_limits():
    b = Boundary(sigma_data=0.5, scale=100.0)
    c_skip, c_out = b.scalings(torch.tensor([0.01, 0.02, 1.0, 100.0], dtype=torch.float64), 0.01)
    assert c_skip[0] == 1 and c_out[0] == 0
    assert (c_skip[1:] < 1).all() and (c_out[1:] > 0).all()
    assert c_skip[2] < 1e-4 and abs(float(c_out[3]) - 1) < 1e-8  # f is D away from the boundary


def test_away_from_boundary_it_is_the_denoiser(tiny_teacher):
    f = ConsistencyDenoiser(tiny_teacher)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(
            f(x, 5.0, class_labels=y), tiny_teacher(x, 5.0, class_labels=y), rtol=0, atol=1e-5
        )


def test_grids_and_curriculum(tiny_teacher):
    g = karras_grid(tiny_teacher, 18)
    assert g.dtype == torch.float64 and len(g) == 18 and (g[1:] > g[:-1]).all()
    assert float(g[0]) == pytest.approx(tiny_teacher.sigma_min)
    assert float(g[-1]) == pytest.approx(tiny_teacher.sigma_max)
    tg = timestep_grid(tiny_teacher, 20)
    ts = tiny_teacher.sigma_to_t(tg)
    assert torch.allclose(ts, torch.tensor([0.0] + [20.0 * i - 1 for i in range(1, 51)]).double())
    ns = [curriculum(s, 1000, 11, 81) for s in range(1000)]
    assert ns[0] == 11 and ns[-1] == 81 and sorted(ns) == ns and set(ns) == {11, 21, 41, 81}
    with pytest.raises(ConfigError):
        curriculum(0, 10, 5, 3)
    with pytest.raises(ConfigError):
        Boundary(sigma_data=0)
