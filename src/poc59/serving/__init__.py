"""The web page and its API over one loaded model: `python -m poc59.serve` (engine, limits, app)."""
