import pytest
from hypothesis import given
from hypothesis import strategies as st

import lnlatten_fast as lf
from helpers import geometries


def test_paper_geometry():
    geom = lf.PatchGeometry.for_image(144, num_patches=16, overlap=16)
    assert (geom.grid, geom.patch, geom.stride, geom.overlap) == (4, 48, 32, 16)
    assert geom.origins()[:5] == [(0, 0), (0, 32), (0, 64), (0, 96), (32, 0)]
    assert geom.origin(15) == (96, 96)


def test_default_overlap_is_the_papers_third():
    assert lf.PatchGeometry.for_image(144, 16) == lf.PatchGeometry(144, 4, 48, 32)


@pytest.mark.parametrize("overlap,patch", [(4, 39), (8, 42), (12, 45), (16, 48), (20, 51), (24, 54)])
def test_table_vii_overlaps(overlap, patch):
    geom = lf.PatchGeometry.for_image(144, num_patches=16, overlap=overlap)
    assert geom.patch == patch == (144 + 3 * overlap) // 4
    assert geom.overlap == overlap
    assert 3 * geom.stride + geom.patch == 144


@pytest.mark.parametrize("num_patches", [4, 9, 16, 25, 36])
def test_table_vi_patch_counts(num_patches):
    geom = lf.PatchGeometry.for_image(144, num_patches)
    n = geom.grid
    assert n * n == num_patches == geom.num_patches
    assert (n - 1) * geom.stride + geom.patch == 144
    # eq. 5: overlap about a third of the patch (the closest integer solution)
    assert abs(geom.overlap - geom.patch / 3) <= 1.0
    for other in range(1, 144):
        spare = n * other - 144
        if spare >= 0 and spare % (n - 1) == 0 and spare // (n - 1) < other:
            assert abs(geom.overlap - geom.patch / 3) <= abs(spare // (n - 1) - other / 3) + 1e-9


def test_impossible_geometry_names_the_constraint():
    with pytest.raises(ValueError, match=r"\(n-1\)·stride \+ patch = image size"):
        lf.PatchGeometry(144, 4, 48, 30)
    with pytest.raises(ValueError, match=r"\(n-1\)·stride \+ patch = image size"):
        lf.PatchGeometry.for_image(144, 16, overlap=15)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(num_patches=15), "perfect square"),
        (dict(num_patches=0), "positive"),
        (dict(num_patches=16, overlap=-1), "non-negative"),
        (dict(num_patches=16, overlap=144), "stride"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        lf.PatchGeometry.for_image(144, **kwargs)


def test_bad_types_and_gaps():
    with pytest.raises(TypeError, match="patch must be an int"):
        lf.PatchGeometry(144, 4, 48.0, 32)
    with pytest.raises(ValueError, match="must not exceed patch"):
        lf.PatchGeometry(10, 2, 4, 6)


@given(geometries(max_patch=30, grids=(1, 2, 3, 4, 5, 6)), st.data())
def test_windows_covering_agrees_with_origins(geom, data):
    pixel = data.draw(st.integers(0, geom.image_size - 1))
    expected = [g for g in range(geom.grid) if g * geom.stride <= pixel < g * geom.stride + geom.patch]
    assert list(geom.windows_covering(pixel)) == expected
    assert expected  # the windows cover the whole image
