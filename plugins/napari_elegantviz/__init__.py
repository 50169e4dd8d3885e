"""napari plugin for elegantviz scene stores (npe2). Imports nothing heavy at start-up."""
