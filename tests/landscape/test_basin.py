"""Basin radius resolved below the grid step (issue 21): analytic quadratic bowls on grids of 3 sizes."""

from __future__ import annotations

import numpy as np
import pytest

from rsmae.landscape import Surface
from rsmae.landscape.basin import basin_radius, bilinear
from rsmae.landscape.report import sharpness

A, B = 1.0, 0.6  # curvatures along x and y: the basin ends first along x
RADIUS = 0.47  # between grid points of every grid below
THRESHOLD = 0.5 * A * RADIUS**2


def _bowl(size: int) -> Surface:
    xs = np.linspace(-1, 1, size)
    xx, yy = np.meshgrid(xs, xs)
    return Surface(2.0 + 0.5 * (A * xx**2 + B * yy**2), xs, xs.copy(), {})


@pytest.mark.parametrize("size", [11, 21, 41])
def test_radius_of_a_quadratic_bowl_within_a_tenth_of_the_step(size: int) -> None:
    surface = _bowl(size)
    step = 2 / (size - 1)
    got = basin_radius(surface, THRESHOLD)
    assert not got.open
    assert got.radius == pytest.approx(RADIUS, abs=0.1 * step)  # the nearest grid point is >= 0.44 steps off
    assert sharpness(surface, THRESHOLD)["basin_radius"] == pytest.approx(got.radius)
    # the mean over rays: the crossing distance averaged over the angle, sqrt(2 t / (A cos^2 + B sin^2))
    angles = np.linspace(0, 2 * np.pi, 3600, endpoint=False)
    mean = np.mean(np.sqrt(2 * THRESHOLD / (A * np.cos(angles) ** 2 + B * np.sin(angles) ** 2)))
    assert got.mean_radius == pytest.approx(mean, abs=0.1 * step)


def test_one_dimensional_curve_and_open_basin() -> None:
    xs = np.linspace(-1, 1, 11)
    curve = Surface(0.5 * A * xs**2, xs)
    assert basin_radius(curve, THRESHOLD).radius == pytest.approx(RADIUS, abs=0.1 * 0.2)
    flat = basin_radius(_bowl(11), threshold=10.0)  # never reached inside the grid: a lower bound
    assert flat.open and flat.radius == pytest.approx(1.0) and sharpness(_bowl(11), 10.0)["basin_open"]


def test_bilinear_is_exact_on_grid_points_and_planes() -> None:
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-2, 2, 7)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    plane = 3 * xx - 2 * yy + 1
    px, py = np.array([-1.0, 0.3, 1.0, 0.77]), np.array([-2.0, 1.1, 2.0, -0.4])
    np.testing.assert_allclose(bilinear(plane, xs, ys, px, py), 3 * px - 2 * py + 1, atol=1e-12)
