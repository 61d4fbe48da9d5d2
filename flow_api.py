"""The ``flow_api`` module as flow scripts see it, importable outside a runner for editors.

Inside a runner ``import flow_api`` gives the live module; this file lets an IDE or a type
checker resolve the same names (``flow_api.System``, ``flow_api.Execution``, the errors).
"""

from flowlink.runtime.flow_api import *  # noqa: F403
from flowlink.runtime.flow_api import __all__  # noqa: F401
