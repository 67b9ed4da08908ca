"""Runs of a sweep grouped into configurations (encoder, seeds, folds) and ranked with intervals, as tables
and files."""
