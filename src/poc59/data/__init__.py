"""Folders -> cached uint8 tensors -> split -> whole batches, augmented on the device. Knows nothing of models."""
