"""Report figures: particle gallery, map views, FSC with resolution labels, orientation distribution."""

from __future__ import annotations

import numpy as np
import pytest

from vitreous.report import fsc_plot, map_views, orientation_plot, particle_gallery
from vitreous.report.imaging import array_png, display_range, figure_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def images_shown(fig) -> int:
    return sum(len(ax.get_images()) for ax in fig.axes)


def test_particle_gallery_shows_each_image() -> None:
    images = np.random.default_rng(1).standard_normal((7, 16, 16))
    fig = particle_gallery(images, labels=[str(i) for i in range(1, 8)], title="particles")
    assert images_shown(fig) == 7 and len(fig.axes) == 9  # 3 x 3 grid
    assert [ax.get_title() for ax in fig.axes[:2]] == ["1", "2"]
    assert figure_png(fig).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        particle_gallery(np.zeros((0, 4, 4)))


def test_map_views_show_central_slices_and_projections() -> None:
    volume = np.zeros((9, 11, 13))
    volume[4, 5, 6] = 1.0
    fig = map_views(volume, voxel_size=2.0, title="map")
    assert images_shown(fig) == 6
    first = fig.axes[0].get_images()[0].get_array()
    assert first.shape == (11, 13) and first[5, 6] == 1.0  # slice z = 4 through the bright voxel
    assert fig.axes[3].get_images()[0].get_array().sum() == pytest.approx(1.0)  # projection along z
    assert images_shown(map_views(volume, projections=False)) == 3
    with pytest.raises(ValueError):
        map_views(np.zeros((4, 4)))


def test_fsc_plot_labels_resolutions() -> None:
    frequency = np.linspace(0, 0.25, 51)
    fig = fsc_plot(frequency, {"half maps": np.clip(1.1 - 5 * frequency, -0.1, 1.0), "flat": np.ones(51)})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "half maps; 0.143: 5.22 Å; 0.5: 8.33 Å"
    assert "> 0.143 to 4.00 Å" in labels[1]
    assert {line.get_ydata()[0] for line in fig.axes[0].lines if len(line.get_ydata()) == 2} >= {0.143, 0.5}
    assert figure_png(fig).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        fsc_plot(frequency, {"short": np.ones(3)})


@pytest.mark.parametrize("kind", ["histogram", "mollweide"])
def test_orientation_plot(kind: str) -> None:
    rng = np.random.default_rng(2)
    euler = np.column_stack([rng.uniform(-180, 180, 500), np.degrees(np.arccos(rng.uniform(-1, 1, 500))),
                             rng.uniform(-180, 180, 500)])
    fig = orientation_plot(euler, kind=kind)
    assert "500 particles" in fig.axes[0].get_title()
    assert figure_png(fig).startswith(PNG_SIGNATURE)


def test_orientation_histogram_counts_every_particle() -> None:
    euler = np.array([[10.0, 45.0, 0.0]] * 4 + [[-170.0, 170.0, 0.0]])
    mesh = orientation_plot(euler).axes[0].collections[0]
    assert mesh.get_array().sum() == 5
    with pytest.raises(ValueError):
        orientation_plot(euler, kind="pie")


def test_image_encoding_handles_flat_and_nan_images() -> None:
    assert display_range(np.ones((4, 4))) == (0.0, 2.0)
    image = np.arange(16.0).reshape(4, 4)
    image[0, 0] = np.nan
    assert array_png(image).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        array_png(np.zeros((2, 2, 2)))
