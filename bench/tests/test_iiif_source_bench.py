"""bench/iiif_source.py: its quick row times the IIIF source and the local file on the same scan."""

from __future__ import annotations

from bench import iiif_source


def test_quick_row_compares_the_iiif_source_with_the_same_file_on_disk():
    (row,) = iiif_source.run(quick=True)
    assert row["name"] == iiif_source.NAME and row["value"] > 0 and row["baseline"] > 0
    assert row["ratio"] == row["value"] / row["baseline"] and row["passed"] is None  # reported, never judged
    assert len(row["details"]["runs_s"]["iiif"]) == iiif_source.QUICK.repeats
