"""Templates rendered into Hub repos: the model card and the Space app."""
