"""mrla_mm: MRLA layer attention for mmdetection and mmpretrain.

The package has two parts with different needs:

- :mod:`mrla_mm.ops`, the MRLA operators, needs torch alone, so that a
  machine which only builds and times the kernels needs nothing else;
- everything else builds on OpenMMLab (mmengine, mmcv, mmdet,
  mmpretrain).

Importing any submodule runs this file first, so it imports OpenMMLab only
where mmengine is installed and importable. There ``import mrla_mm``
registers every module of the package through :mod:`mrla_mm.registry`,
so configs may name them after
``custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)``,
lets torch's safe loader open mmengine training checkpoints
(:mod:`mrla_mm.checkpoint.safe_loading`) and makes mmengine check the hash
of published checkpoints (:mod:`mrla_mm.checkpoint.integrity`).
"""
import importlib.util

from .version import __version__, version_info


def _openmmlab_importable() -> bool:
    """Whether mmengine can be imported, found without importing it."""
    try:
        return importlib.util.find_spec('mmengine') is not None
    except ImportError:
        # An import hook that refuses it: the same as not installed.
        return False


if _openmmlab_importable():
    from . import engine, models  # noqa: F401  register their modules
    from .checkpoint import (
        allow_mmengine_checkpoints,
        register_integrity_check,
    )

    allow_mmengine_checkpoints()
    # Published files (NAME-<sha256 prefix>.pth) are hash checked on load.
    register_integrity_check()

__all__ = ['__version__', 'version_info']
