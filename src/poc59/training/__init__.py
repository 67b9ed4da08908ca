"""One training run (`training.run.train`) and what it writes: resume, checkpoints, throughput, progress,
validation overlays, multi-process start-up, and what became of a sweep's runs."""
