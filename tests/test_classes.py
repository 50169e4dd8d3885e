import json

import numpy as np
import pytest

from elegantviz.classes import (
    BUILTIN_TABLES, DEEPGLOBE, FBP, IGNORE_INDEX, INRIA, LOVEDA, RIVERWORLD, get_class_table, table_from_values,
)
from elegantviz.errors import InputError


def test_builtin_tables_have_the_documented_classes():
    assert FBP.num_classes == 24 and FBP.names[10] == "river" and FBP.names[13] == "pond"
    assert FBP.names[0] == "industrial area" and FBP.names[-1] == "airport"
    assert DEEPGLOBE.num_classes == 7 and "unknown" in DEEPGLOBE.names
    assert INRIA.names == ["background", "building"]
    assert LOVEDA.num_classes == 7
    assert RIVERWORLD.names == ["cropland", "forest", "built-up", "river", "pond"]
    assert set(BUILTIN_TABLES) == {"fbp", "deepglobe", "inria", "loveda", "riverworld"}


def test_fbp_mapping_shifts_ids_and_ignores_unlabeled_and_unknown():
    raw = np.array([[0, 1, 11], [24, 25, 14]], np.uint8)
    ids, unknown, skipped = FBP.map_values(raw)
    assert ids.tolist() == [[IGNORE_INDEX, 0, 10], [23, IGNORE_INDEX, 13]]
    assert (unknown, skipped) == (1, 1)


def test_nodata_and_nan_go_to_ignore_and_are_counted_apart():
    raw = np.array([1.0, 2.0, np.nan, -99999.0, 9.0])
    table = table_from_values(np.array([1, 2]))
    ids, unknown, skipped = table.map_values(raw, nodata=-99999.0)
    assert ids.tolist() == [0, 1, 255, 255, 255]
    assert (unknown, skipped) == (1, 2)


def test_inria_maps_255_to_building():
    ids, unknown, _ = INRIA.map_values(np.array([0, 255, 255, 0], np.uint8))
    assert ids.tolist() == [0, 1, 1, 0] and unknown == 0


def test_deepglobe_rgb_masks_map_by_colour():
    rgb = np.zeros((3, 1, 3), np.uint8)
    rgb[:, 0, 0] = (0, 0, 255)  # water
    rgb[:, 0, 1] = (255, 255, 0)  # agriculture
    rgb[:, 0, 2] = (12, 34, 56)  # not a DeepGlobe colour
    ids, unknown, _ = DEEPGLOBE.map_colors(rgb)
    assert ids[0].tolist() == [DEEPGLOBE.id_of("water"), DEEPGLOBE.id_of("agriculture land"), 255]
    assert unknown == 1


def test_json_table_round_trip_and_errors(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(RIVERWORLD.to_dict()))
    assert get_class_table(str(path)) == RIVERWORLD
    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": [{"id": 1, "name": "x"}]}')
    with pytest.raises(InputError, match="bad.json"):
        get_class_table(str(bad))
    with pytest.raises(InputError, match="nosuch"):
        get_class_table("nosuch")
