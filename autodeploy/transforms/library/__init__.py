"""Built-in transforms, one file per transform, grouped in one folder per stage.

Every module here is imported so its ``@TransformRegistry.register`` runs. The file name is the
registered name.
"""

import importlib
import pkgutil


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


_import_all()
