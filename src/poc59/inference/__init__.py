"""A trained model on full-resolution scans: reading scans in strips, tiling and row streaming, any training
geometry, and what predict writes (label maps, overlays, damage statistics)."""
