"""Custom ops in the ``torch.ops.auto_deploy`` namespace, one folder per op family.

Importing this package imports every module below it, so every op is registered. Reference ops
are ``torch_*`` (in ``torch_backend.py``); backends (``triton_*``, ``flashinfer_*``) share their
semantics. A backend module whose optional dependency is not installed is skipped (logged at
debug level); any other import error is raised.
"""

import importlib
import pkgutil

from ..utils.logger import logger

_OPTIONAL_DEPENDENCIES = ("triton", "flashinfer")


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in _OPTIONAL_DEPENDENCIES:
                raise
            logger.debug("skipping %s: optional dependency %s is missing", info.name, exc.name)


_import_all()
