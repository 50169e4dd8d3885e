"""Every scene store a writer makes is valid OME-Zarr 0.5 by ome-zarr-models (issue #16).

ome-zarr-py's reader is lenient, so reading alone never showed that every image-label failed
validation (the colours listed the ignore value 255, the properties did not). Each writer is
checked here: convert, synth, predict, evaluate and the napari writer. Every group is
validated on its own (root image, ``labels``, each label image, each map that claims NGFF), and
ome-zarr-py must still find the labels with their colours and class names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from elegantviz.classes import IGNORE_INDEX, RIVERWORLD
from elegantviz.cli import main
from elegantviz.errors import InputError
from elegantviz.io.store import open_scene

pytest.importorskip("ome_zarr_models")


def validate_store(path: str | Path) -> dict[str, set[str]]:
    """Validate every group of a scene store; the label and map names found."""
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    root = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(root)  # the image, and through it the labels group and every label
    assert isinstance(open_ome_zarr(root), Image)
    found: dict[str, set[str]] = {"labels": set(), "maps": set()}
    if "labels" in root:
        labels = Labels.from_zarr(root["labels"])
        assert image.labels is not None
        listed = set(labels.label_paths)
        finished = {n for n in root["labels"].group_keys() if root[f"labels/{n}"].attrs.get("elegantviz", {}).get("complete")}
        assert listed == finished, "labels/ lists every finished label image and nothing else"
        for name in sorted(listed):
            group = root[f"labels/{name}"]
            label = ImageLabel.from_zarr(group)
            assert isinstance(open_ome_zarr(group), ImageLabel), name
            meta = label.attributes.ome.image_label
            assert meta is not None and meta.colors and meta.properties, name
            assert meta.source is not None and meta.source.image == "../../"
        found["labels"] = listed
    if "maps" in root:
        for name in sorted(root["maps"].group_keys()):
            group = root[f"maps/{name}"]
            if "ome" in group.attrs:  # a map that claims to be an NGFF image must be one
                assert isinstance(Image.from_zarr(group), Image)
                found["maps"].add(name)
    return found


def ome_zarr_py_labels(path: str | Path) -> dict[str, dict]:
    """{label name: ome-zarr-py node metadata} of every label image its reader finds."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = [n for n in Reader(parse_url(str(path)))() if n.load(Label) is not None]
    return {n.metadata["name"]: n.metadata for n in nodes}


def assert_colours_and_names(path: str | Path, names: set[str]) -> None:
    """ome-zarr-py reads each label with its class table's colours and names; ignore is transparent."""
    scene = open_scene(path)
    found = ome_zarr_py_labels(path)
    assert names <= set(found), (names, set(found))
    for name in names:
        table = scene.label_classes(name)
        assert table is not None, name
        meta = found[name]
        for c in table.classes:
            assert meta["color"][c.id] == pytest.approx([*(v / 255 for v in c.color), 1.0], abs=1e-3), (name, c)
            assert meta["properties"][c.id]["class"] == c.name
        assert meta["color"][IGNORE_INDEX][3] == 0.0  # ignore stays transparent


def synth(path: Path, size: int = 128, chunk: int = 64) -> Path:
    assert main(["synth", str(path), "--size", str(size), "--chunk", str(chunk), "-q"]) == 0
    return path


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, one_torch_thread) -> Path:
    """A small riverworld scene predicted by the shipped model through the CLI."""
    from elegantviz.weights import shipped_checkpoint

    path = synth(tmp_path_factory.mktemp("ngff") / "pred.zarr")
    assert main(["predict", str(shipped_checkpoint()), str(path), "-q"]) == 0
    return path


def test_convert_png_with_mask_validates(tmp_path):
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (150, 140, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((150, 140), np.uint8)
    mask[20:60, 10:90] = 3
    mask[100:, :30] = 1
    mask[0, 0] = 200  # outside the table: becomes ignore (255)
    PILImage.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "png.zarr"
    assert main(["convert", str(tmp_path / "img.png"), str(out), "--mask", str(tmp_path / "mask.png"),
                 "--classes", "riverworld", "--chunk", "64", "-q"]) == 0
    assert open_scene(out).label("gt").compute()[0, 0] == IGNORE_INDEX
    assert validate_store(out)["labels"] == {"gt"}
    assert_colours_and_names(out, {"gt"})


def test_convert_geotiff_with_classes_from_the_mask_validates(tmp_path):
    from conftest import write_geotiff

    rng = np.random.default_rng(1)
    write_geotiff(tmp_path / "img.tif", rng.integers(0, 4000, (4, 130, 120), dtype=np.uint16))
    mask = np.where(rng.random((130, 120)) < 0.5, 10, 20).astype(np.uint8)
    mask[:5] = 0
    write_geotiff(tmp_path / "mask.tif", mask, nodata=0)  # nodata in the mask becomes ignore
    out = tmp_path / "tif.zarr"
    assert main(["convert", str(tmp_path / "img.tif"), str(out), "--mask", str(tmp_path / "mask.tif"),
                 "--chunk", "64", "-q"]) == 0
    assert validate_store(out)["labels"] == {"gt"}
    assert_colours_and_names(out, {"gt"})


def test_synth_validates(tmp_path):
    out = synth(tmp_path / "rw.zarr", size=256, chunk=128)
    assert validate_store(out)["labels"] == {"gt"}
    assert_colours_and_names(out, {"gt"})


def test_predict_validates(predicted):
    found = validate_store(predicted)
    assert {"gt", "pred", "hard", "error"} <= found["labels"]
    assert {"margin", "boundary", "keys", "queries", "attention"} <= found["maps"]
    assert_colours_and_names(predicted, {"gt", "pred", "hard", "error"})


def test_coarse_maps_say_where_they_lie(predicted):
    """maps/keys is at the model's stride: its NGFF scale must say so, or a generic viewer
    would draw it 8x too small in the top-left corner."""
    import zarr

    scene = open_scene(predicted)
    h, w = scene.shape[1:]
    for name in ("keys", "margin"):
        # the margin is stored upsampled to the image; the keys at the model's stride
        stride = scene.part_meta("maps", name)["stride"] if name == "keys" else 1
        ms = zarr.open_group(str(predicted / "maps" / name), mode="r").attrs["ome"]["multiscales"][0]
        for k, ds in enumerate(ms["datasets"]):
            scale = ds["coordinateTransformations"][0]["scale"][-2:]
            assert scale == [stride * 2**k] * 2
            shape = scene.map_levels(name)[k].shape[-2:]
            # the level covers the image: its extent in level-0 pixels is the image's, within a pixel
            assert abs(shape[0] * scale[0] - h) < scale[0] and abs(shape[1] * scale[1] - w) < scale[1]
    assert scene.part_meta("maps", "keys")["stride"] > 1


def test_evaluate_error_maps_validate(predicted, tmp_path):
    from elegantviz.io.store import open_scene as reopen

    path = tmp_path / "ev.zarr"
    shutil.copytree(predicted, path)
    scene = reopen(path, mode="r+")
    other = scene.label("gt").compute().copy()
    other[:40] = RIVERWORLD.id_of("river")
    scene.add_labels("other", other, progress=False)
    assert main(["evaluate", str(path), "--out", str(tmp_path / "ev"), "-q"]) == 0
    assert main(["evaluate", str(path), "--pred", "other", "--pair", "pond:river", "--out", str(tmp_path / "ev2"),
                 "-q"]) == 0
    found = validate_store(path)
    assert {"error", "error_other", "other"} <= found["labels"]
    assert_colours_and_names(path, {"error", "error_other"})


def test_napari_writer_validates_new_and_existing_stores(tmp_path):
    from napari_elegantviz.palette import label_features
    from napari_elegantviz.writer import write_labels

    existing = synth(tmp_path / "scene.zarr")
    edited = open_scene(existing).label("gt").compute().astype(np.int32)
    edited[:30, :30] = RIVERWORLD.id_of("pond")
    attrs = {"name": "edited gt", "features": label_features(RIVERWORLD),
             "metadata": {"elegantviz": {"classes": RIVERWORLD.to_dict()}}}
    write_labels(str(existing), edited, attrs)
    assert validate_store(existing)["labels"] == {"gt", "edited_gt"}
    assert_colours_and_names(existing, {"gt", "edited_gt"})

    mask = np.zeros((90, 70), np.uint8)
    mask[10:40, 10:40] = 2
    mask[60:, :] = IGNORE_INDEX
    feats = {"index": np.array([0, 1, 2]), "class": np.array(["sea", "ship", "buoy"], dtype=object)}
    new = tmp_path / "new.zarr"
    write_labels(str(new), mask, {"name": "ships", "features": feats, "metadata": {}})
    assert validate_store(new)["labels"] == {"ships"}
    assert_colours_and_names(new, {"ships"})


def failing_labels(shape: tuple[int, int], chunk: int = 64):
    """Labels whose last block cannot be computed: a write interrupted half-way."""
    import dask.array as da

    def block(b, block_info=None):
        if block_info[None]["chunk-location"] == tuple(n - 1 for n in block_info[None]["num-chunks"]):
            raise RuntimeError("interrupted")
        return b

    return da.zeros(shape, np.uint8, chunks=chunk).map_blocks(block, dtype=np.uint8)


def test_interrupted_and_refused_label_writes_leave_a_valid_store(tmp_path):
    path = synth(tmp_path / "rw.zarr")
    scene = open_scene(path, mode="r+")
    gt = scene.label("gt").compute()
    with pytest.raises(InputError):  # refused: gt stays listed and valid
        scene.add_labels("gt", gt, progress=False)
    assert validate_store(path)["labels"] == {"gt"}
    with pytest.raises(RuntimeError, match="interrupted"):
        scene.add_labels("gt", failing_labels(gt.shape), overwrite=True, progress=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        scene.add_labels("pred", failing_labels(gt.shape), progress=False)
    # half-written labels are not listed, so an NGFF reader never follows the list into them
    assert validate_store(path)["labels"] == set()
    assert set(open_scene(path).incomplete_parts()) == {"labels/gt", "labels/pred"}
    scene.add_labels("gt", gt, progress=False)  # resumes the interrupted rewrite
    assert validate_store(path)["labels"] == {"gt"}
    scene.remove("labels", "pred")
    scene.remove("labels", "gt")
    assert validate_store(path)["labels"] == set()


def test_old_stores_still_open_and_what_is_added_to_them_validates(tmp_path):
    from ome_zarr_models.v05.image_label import ImageLabel

    path = synth(tmp_path / "old.zarr")
    group = zarr.open_group(str(path / "labels" / "gt"), mode="r+")
    ome = dict(group.attrs["ome"])  # as versions before issue #16 wrote it: ignore has a colour, no property
    ome["image-label"] = {**ome["image-label"],
                          "properties": [p for p in ome["image-label"]["properties"] if p["label-value"] != 255]}
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match="Inconsistent `label_value`"):
        ImageLabel.from_zarr(group)
    scene = open_scene(path, mode="r+")  # reading stays lenient
    assert scene.labels == ["gt"] and scene.label_classes("gt").names == RIVERWORLD.names
    assert ome_zarr_py_labels(path)["gt"]["properties"][3]["class"] == RIVERWORLD.names[3]
    scene.add_labels("pred", scene.label("gt").compute(), progress=False)
    ImageLabel.from_zarr(zarr.open_group(str(path / "labels" / "pred"), mode="r"))
    assert_colours_and_names(path, {"gt", "pred"})
