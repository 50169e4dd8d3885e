"""Scene stores (OME-NGFF zarr) and raster conversion. Knows nothing about torch."""
