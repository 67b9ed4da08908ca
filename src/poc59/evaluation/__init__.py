"""Scoring a trained model on a split: passes over the images, the metrics.json record, its pictures and
report, and a whole sweep at once."""
