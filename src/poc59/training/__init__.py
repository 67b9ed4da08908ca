"""One training run: its callbacks (progress, throughput, overlays) and what joins data and model."""
