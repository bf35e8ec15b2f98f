"""Check a published checkpoint's content against the hash in its name.

OpenMMLab's model zoo names a released file ``NAME-<h>.pth`` where ``<h>``
is the first 8 hex digits of the SHA-256 of the file's bytes
(:func:`mrla_mm.utils.publish.publish_checkpoint` writes such files).

Design of the hook into mmengine:

Every local, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` load
in mmengine goes through ``CheckpointLoader.load_checkpoint``, which picks
a loader from a registry of path *schemes*: each scheme is a regular
expression matched (``re.match``) against the path, longer (string-greater)
schemes first, and the empty scheme ``''``, mmengine's ``load_from_local``,
last. :func:`register_integrity_check` adds one more scheme,
:data:`HASHED_LOCAL_PATH`, a pattern of pure look-aheads that matches only
a path without ``://`` whose name ends in ``-<8 lowercase hex>.pth``. Its
loader, :func:`load_from_local_sha256`, hashes the file (streamed in
chunks, so a file of hundreds of MB costs no extra memory) and then hands
it to mmengine's own ``load_from_local``. So:

- a published local file is checked, then loaded exactly as before;
- every other local file, and every URL or remote scheme (``https://``,
  ``s3://``, ``open-mmlab://``...; torch checks the hash of downloads
  itself), keeps the loader it had: nothing is wrapped or replaced;
- a mismatch raises :class:`CheckpointHashError` naming the file, the
  expected and the actual prefix, before a single tensor is unpickled.

``import mrla_mm`` registers the scheme (idempotently).
"""
import hashlib
import os.path as osp
import re
from typing import Optional

# A published file: 8 lowercase hex digits of SHA-256 before ``.pth``.
HASH_SUFFIX = re.compile(r'-([0-9a-f]{8})\.pth$')
# The scheme: no ``://`` anywhere (not a URL), name ends like HASH_SUFFIX.
# Look-aheads only, so re.match consumes nothing and the path is unchanged.
HASHED_LOCAL_PATH = r'(?!.*://)(?=.*-[0-9a-f]{8}\.pth$)'
HASH_PREFIX_LEN = 8


class CheckpointHashError(ValueError):
    """A published checkpoint whose content does not match its name."""


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in ``chunk_size`` byte chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def expected_hash_prefix(path: str) -> Optional[str]:
    """The 8 hex digits a published file's name promises, or None."""
    match = HASH_SUFFIX.search(osp.basename(path))
    return match.group(1) if match else None


def verify_checkpoint_hash(path: str) -> str:
    """Check that ``path``'s SHA-256 starts with the suffix of its name.

    Args:
        path (str): A local file named ``NAME-<8 hex>.pth``.

    Returns:
        str: The file's full SHA-256 hex digest.

    Raises:
        ValueError: The name carries no hash suffix.
        FileNotFoundError: The file does not exist.
        CheckpointHashError: The content does not match the name.
    """
    expected = expected_hash_prefix(path)
    if expected is None:
        raise ValueError(
            f'checkpoint name {osp.basename(path)!r} has no hash suffix: a '
            "published file is named 'NAME-<first 8 hex digits of its "
            "sha256>.pth'")
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise CheckpointHashError(
            f'checkpoint {path} failed its integrity check: its name '
            f'expects a sha256 starting with {expected}, its content hashes '
            f'to {actual[:HASH_PREFIX_LEN]} (full sha256 {actual}). The file '
            'is corrupt, truncated or was renamed; download or publish it '
            'again.')
    return actual


def load_from_local_sha256(filename: str, map_location=None):
    """mmengine loader of a local published checkpoint, hash checked first.

    Args:
        filename (str): Local path of a ``NAME-<8 hex>.pth`` file.
        map_location (str, optional): As in :func:`torch.load`.

    Returns:
        dict: The loaded checkpoint, from mmengine's ``load_from_local``.
    """
    from mmengine.runner.checkpoint import load_from_local
    verify_checkpoint_hash(osp.expanduser(filename))
    return load_from_local(filename, map_location)


def register_integrity_check() -> None:
    """Make mmengine check published local checkpoints on every load."""
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(
        HASHED_LOCAL_PATH, load_from_local_sha256, force=True)
