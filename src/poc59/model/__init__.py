"""Networks (encoder + decoder), the Segmenter every command runs, losses, the metric convention and the
LightningModule. Knows nothing of files of runs or launchers."""
