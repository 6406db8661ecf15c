"""The op registry: importing this package registers every built-in op."""
from .base import REGISTRY, Code, Module, Op, Param, ShapeError, op, register  # noqa: F401
from . import dense  # noqa: F401  (each family module registers its ops)
from . import conv, norm, activation, regularize, pooling, shape, elementwise, structural  # noqa: F401
from . import graph_io  # noqa: F401
from . import attention, position  # noqa: F401
from . import search  # noqa: F401
from . import recurrent  # noqa: F401
from . import lora  # noqa: F401  (adapters inserted by finetune plans)
from . import objectives, stochastic  # noqa: F401  (losses, ensembles, masking, EMA targets)
