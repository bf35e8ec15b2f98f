"""mrla_mm: MRLA layer attention for mmdetection and mmpretrain.

``import mrla_mm`` registers every module of the package into mmdet's and
mmpretrain's registries, so configs may name them after
``custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)``,
lets torch's safe loader open mmengine training checkpoints
(:mod:`mrla_mm.utils.safe_loading`) and makes mmengine check the hash of
published checkpoints (:mod:`mrla_mm.utils.checkpoint_integrity`).
:mod:`mrla_mm.ops` alone needs torch only.
"""
import importlib.util

from .version import __version__, version_info

# A machine with torch alone (e.g. one that only builds and times the ops)
# can still import mrla_mm.ops; everywhere else the modules are registered.
if importlib.util.find_spec('mmengine') is not None:
    from . import engine, models  # noqa: F401
    from .utils.checkpoint_integrity import register_integrity_check
    from .utils.safe_loading import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    # Published files (NAME-<sha256 prefix>.pth) are hash checked on load.
    register_integrity_check()

__all__ = ['__version__', 'version_info']
