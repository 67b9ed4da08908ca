"""The Label Studio round trip: poc59's predictions out as pre-annotations (ranked by how much a correction is
worth), the submitted corrections back in as pairs of a dataset; the brush RLE both ways."""
