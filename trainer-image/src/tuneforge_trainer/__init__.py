"""Tuneforge trainer: one typed config in, a LoRA/QLoRA adapter, metrics and a summary out.

Light modules (no torch import): ``config``, ``summary``, ``progress``, ``data``. Heavy ones
(``modeling``, ``train``, ``evaluate``) import torch/transformers when used.
"""

__version__ = "0.1.0"
