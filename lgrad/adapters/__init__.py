"""Parameter-efficient adapters as pytree wrappers (LoRA, FFA-LoRA).

:mod:`lgrad.adapters._lora`: :class:`LoRA` nodes on any kernel leaf (Flax NNX
``Linear``/``Einsum`` kernels by default), :func:`merge_lora`, the optax
composition :func:`lora_transform` (``multi_transform`` + ``set_to_zero``),
per-example gradients for DP-SGD, and the federated :func:`lora_client` (the
account of FFA-LoRA: ``docs/papers/ffa-lora.md``).
"""
from lgrad.adapters._lora import LoRA as LoRA
from lgrad.adapters._lora import add_lora as add_lora
from lgrad.adapters._lora import combine as combine
from lgrad.adapters._lora import lora_client as lora_client
from lgrad.adapters._lora import lora_delta as lora_delta
from lgrad.adapters._lora import lora_init as lora_init
from lgrad.adapters._lora import lora_labels as lora_labels
from lgrad.adapters._lora import lora_transform as lora_transform
from lgrad.adapters._lora import merge_lora as merge_lora
from lgrad.adapters._lora import partition as partition
from lgrad.adapters._lora import per_example_grads as per_example_grads

__all__ = [
    "LoRA",
    "add_lora",
    "combine",
    "lora_client",
    "lora_delta",
    "lora_init",
    "lora_labels",
    "lora_transform",
    "merge_lora",
    "partition",
    "per_example_grads",
]

#: Public transformation factories (for the shared transform table).
TRANSFORMS = ("lora_transform",)
