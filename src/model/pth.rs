//! Reader of torch.save files (zip + pickle), for the reference checkpoints and ImageNet weights.
