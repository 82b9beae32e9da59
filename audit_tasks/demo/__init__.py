"""The demo: a generated image world with planted biases whose truth is known, and two small models.

`build_demo(out)` writes the data, trains (or reuses) a biased and a debiased resnet18 on CPU, and writes
two audit configs; auditing them shows what the tool is for. Importing this package does not import torch.
"""

from audit_tasks.demo.build import SCALES, DemoBuild, build_demo

__all__ = ["SCALES", "DemoBuild", "build_demo"]
