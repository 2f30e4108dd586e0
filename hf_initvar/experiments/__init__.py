"""Experiments: language-model data, the ReLU MLP std sweep and the Kaiming-vs-Xavier comparison."""
