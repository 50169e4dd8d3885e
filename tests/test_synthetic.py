import numpy as np
from scipy import ndimage

from elegantviz.data.synthetic import POND, RIVER, RiverworldSpec, render_image, render_labels, synthesize_riverworld
from elegantviz.io.store import open_scene


def test_same_seed_same_scene_and_blocks_do_not_matter(tmp_path):
    a = synthesize_riverworld(tmp_path / "a.zarr", height=300, width=260, seed=5, tile=64, progress=False)
    b = synthesize_riverworld(tmp_path / "b.zarr", height=300, width=260, seed=5, tile=128, progress=False)
    np.testing.assert_array_equal(a.image().compute(), b.image().compute())
    np.testing.assert_array_equal(a.label("gt").compute(), b.label("gt").compute())
    c = render_labels(RiverworldSpec(300, 260, 6), 0, 300, 0, 260)
    assert (c != a.label("gt").compute()).mean() > 0.01  # another seed, another scene


def test_rivers_cross_the_scene_and_ponds_are_bounded():
    spec = RiverworldSpec(1024, 1024, seed=11)
    labels = render_labels(spec, 0, 1024, 0, 1024)
    rivers, ponds = spec.shapes()
    assert len(rivers) >= 1 and len(ponds) >= 3
    comps, n = ndimage.label(labels == RIVER)
    for k in range(1, n + 1):
        ys, xs = np.nonzero(comps == k)
        if len(ys) < 500:
            continue
        crosses = (ys.min() == 0 and ys.max() == 1023) or (xs.min() == 0 and xs.max() == 1023)
        assert crosses, "every river runs border to border"
    comps, n = ndimage.label(labels == POND)
    assert n >= 3
    border = np.unique(np.concatenate([comps[0], comps[-1], comps[:, 0], comps[:, -1]]))
    assert set(border.tolist()) <= {0}, "no pond touches the border"


def test_rivers_and_ponds_share_one_texture_and_width_range():
    spec = RiverworldSpec(1024, 1024, seed=2)
    img = render_image(spec, 0, 1024, 0, 1024).astype(float)
    labels = render_labels(spec, 0, 1024, 0, 1024)
    river, pond = img[:, labels == RIVER], img[:, labels == POND]
    np.testing.assert_allclose(river.mean(1), pond.mean(1), atol=3)
    np.testing.assert_allclose(river.std(1), pond.std(1), rtol=0.25)
    # stroke width: twice the largest distance to the bank inside the water
    lo, hi = spec.water_width
    for cls in (RIVER,):
        width = 2 * ndimage.distance_transform_edt(labels == cls).max()
        assert lo - 2 <= width <= hi + 2
    rivers, ponds = spec.shapes()
    oxbows = [p for p in ponds if p.span]
    assert all(lo <= p.width <= hi for p in oxbows) and all(lo <= r.width <= hi for r in rivers)


def test_cli_synth_geotiff_then_convert(tmp_path):
    from elegantviz.cli import main

    assert main(["synth", str(tmp_path / "rw.tif"), "--size", "200", "--width", "150", "-q"]) == 0
    assert (tmp_path / "rw_mask.tif").exists()
    assert main(["convert", str(tmp_path / "rw.tif"), str(tmp_path / "rw.zarr"), "--mask", str(tmp_path / "rw_mask.tif"),
                 "--classes", "riverworld", "-q"]) == 0
    scene = open_scene(tmp_path / "rw.zarr")
    spec = RiverworldSpec(200, 150, 0)
    np.testing.assert_array_equal(scene.label("gt").compute(), render_labels(spec, 0, 200, 0, 150))
    np.testing.assert_array_equal(scene.image().compute(), render_image(spec, 0, 200, 0, 150))


def test_synth_never_writes_into_a_plain_folder_or_an_image_name(tmp_path, capsys):
    from elegantviz.cli import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["synth", str(folder), "--size", "64", "-q"]) == 2
    assert (folder / "notes.txt").read_text() == "keep me"
    assert main(["synth", str(tmp_path / "x.png"), "--size", "64", "-q"]) == 2
    assert "not a .png file" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["synth", str(tmp_path / "ok.zarr"), "--size", "64", "-q"]) == 0
