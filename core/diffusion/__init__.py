"""The model and its math: beta schedules, the forward process, samplers, the UNet, EMA, checkpoints, device choice."""
