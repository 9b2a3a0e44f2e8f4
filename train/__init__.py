"""cifar-insight training package. Importing it registers ``resnet18_cifar`` in timm."""

from train import model as _model  # noqa: F401  (registers the timm model)
