"""The diffusion model and its training: plain PyTorch, no UI imports."""
