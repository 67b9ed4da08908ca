"""A trained model as a file and back: the ModelCard, checkpoints and exported ONNX / TorchScript loaded as
one TrainedModel, and the export itself."""
