"""`mmmmodal demo`: a synthetic multimodal world, learned end to end through the real pipeline."""
