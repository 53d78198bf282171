"""raywarp: temporally consistent video restoration with image diffusion models on Ray."""
