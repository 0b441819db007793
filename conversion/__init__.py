"""Scripts that build, convert and publish MMMModal checkpoints (`mmmmodal build|convert|push`)."""
