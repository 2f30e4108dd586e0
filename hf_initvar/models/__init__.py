"""Models of the package: the ReLU MLP and GPT-2 presets."""
