"""The tiny compress job the CLI tests run: demo_vgg with one generated layer, synthetic data."""


def tiny_recipe(epochs: float, checkpoint_every: int, layerwise_steps: int = 5) -> str:
    """A recipe replacing classifier.3 of demo_vgg (32x32, 10 classes), batch 16."""
    return f"""\
version: 1
model: {{arch: demo_vgg, num_classes: 10, input_size: 32}}
layers:
  - select: classifier.3
    bond_dim: 3
distill:
  layerwise: {{steps: {layerwise_steps}, batches: 1}}
  finetune: {{epochs: {epochs}, lr: 1.0e-3, checkpoint_every: {checkpoint_every}}}
data: {{batch_size: 16}}
"""
