"""Check a published checkpoint's content against the hash in its name.

OpenMMLab's model zoo names a released file ``NAME-<h>.pth`` where ``<h>``
is the first hex digits of the SHA-256 of the file's bytes.
:func:`mrla_mm.checkpoint.publish.publish_checkpoint` writes such files,
with the shortest prefix of at least 8 digits that holds a letter
``a``-``f``.

Which names are checked: a local path whose name ends in ``-<h>.pth``
where ``<h>`` is 8 to 64 lowercase hex digits *with at least one letter*
(:data:`HASH_SUFFIX`). A run of decimal digits, such as a date
(``run-20261202.pth``) or a counter (``epoch-00000012.pth``), is never
read as a hash. A name of that form may still have been chosen by hand, so
a mismatch states what the name promised and what the content hashes to,
and how to load the file without the check.

Opting out: ``MRLA_MM_HASH_CHECK=0`` in the environment (read at every
load) loads such files without hashing them.

Design of the hook into mmengine:

Every local, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` load
in mmengine goes through ``CheckpointLoader.load_checkpoint``, which picks
a loader from a registry of path *schemes*: each scheme is a regular
expression matched (``re.match``) against the path, longer (string-greater)
schemes first, and the empty scheme ``''``, mmengine's ``load_from_local``,
last. :func:`register_integrity_check` adds one more scheme,
:data:`HASHED_LOCAL_PATH`, a pattern of pure look-aheads that matches only
a path without ``://`` whose name ends like :data:`HASH_SUFFIX`. Its
loader, :func:`load_from_local_sha256`, hashes the file (streamed in
chunks, so a file of hundreds of MB costs no extra memory) and then hands
it to mmengine's own ``load_from_local``. So:

- a published local file is checked, then loaded exactly as before;
- every other local file, and every URL or remote scheme (``https://``,
  ``s3://``, ``open-mmlab://``...; torch checks the hash of downloads
  itself), keeps the loader it had: nothing is wrapped or replaced;
- a mismatch raises :class:`CheckpointHashError` naming the file, the
  expected prefix and the actual hash, before a single tensor is
  unpickled.

The scheme is process-wide, like every mmengine loader: it applies to any
model loaded in a process that imported mrla_mm. ``import mrla_mm``
registers it (idempotently).
"""
import hashlib
import os
import os.path as osp
import re
from typing import Optional

# The hash of a published name: 8 to 64 lowercase hex digits, at least one
# of them a letter, between the last '-' and '.pth'.
HASH_DIGITS = r'(?=[0-9]*[a-f])[0-9a-f]{8,64}'
HASH_SUFFIX = re.compile(rf'-({HASH_DIGITS})\.pth$')
# The scheme: no ``://`` anywhere (not a URL), name ends like HASH_SUFFIX.
# Look-aheads only, so re.match consumes nothing and the path is unchanged.
HASHED_LOCAL_PATH = rf'(?!.*://)(?=.*-{HASH_DIGITS}\.pth$)'
HASH_PREFIX_LEN = 8
# Set to '0' to load files named like published ones without hashing them.
HASH_CHECK_ENV = 'MRLA_MM_HASH_CHECK'


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
    """The hex digits a published file's name promises, or None."""
    match = HASH_SUFFIX.search(osp.basename(path))
    return match.group(1) if match else None


def verify_checkpoint_hash(path: str) -> str:
    """Check that ``path``'s SHA-256 starts with the suffix of its name.

    Args:
        path (str): A local file named ``NAME-<h>.pth``, see
            :data:`HASH_SUFFIX`.

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
            "published file is named 'NAME-<h>.pth', <h> being the first 8 "
            'to 64 lowercase hex digits of its sha256, at least one a letter')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise CheckpointHashError(
            f'checkpoint {path}: its name ends in -{expected}.pth, the '
            'model-zoo form NAME-<first hex digits of the sha256>.pth, so '
            f'its sha256 was expected to start with {expected}; the file '
            f'hashes to {actual[:len(expected)]} (sha256 {actual}). If it '
            'is a published release, it is not the file published under '
            'this name: download or publish it again. If the name was '
            f'chosen by hand, rename the file, or set {HASH_CHECK_ENV}=0 to '
            'load it without the check.')
    return actual


def hash_check_enabled() -> bool:
    """Whether :data:`HASH_CHECK_ENV` leaves the check on (unset or 1)."""
    value = os.environ.get(HASH_CHECK_ENV, '1')
    if value not in ('0', '1'):
        raise ValueError(f'{HASH_CHECK_ENV}={value!r}: allowed values are '
                         "'1' (check published names, the default) and '0'")
    return value == '1'


def load_from_local_sha256(filename: str, map_location=None):
    """mmengine loader of a local published checkpoint, hash checked first
    unless :data:`HASH_CHECK_ENV` is ``0``.

    Args:
        filename (str): Local path of a ``NAME-<h>.pth`` file.
        map_location (str, optional): As in :func:`torch.load`.

    Returns:
        dict: The loaded checkpoint, from mmengine's ``load_from_local``.
    """
    from mmengine.runner.checkpoint import load_from_local
    if hash_check_enabled():
        verify_checkpoint_hash(osp.expanduser(filename))
    return load_from_local(filename, map_location)


def register_integrity_check() -> None:
    """Make mmengine check published local checkpoints on every load."""
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(
        HASHED_LOCAL_PATH, load_from_local_sha256, force=True)
