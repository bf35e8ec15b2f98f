"""What every conversion of the authors' checkpoints shares: the output
formats, the names of the MRLA layer inside a block and the error a file
that does not convert raises."""

FORMATS = ('mmdet', 'mmpretrain')

# The authors' layer attention names -> ours, inside one block.
MRLA_LAYER_KEYS = {
    'mrla.mrla.Wq.weight': 'mrla.query_conv.weight',
    'mrla.mrla.Wk.weight': 'mrla.key_conv.weight',
    'mrla.mrla.Wv.weight': 'mrla.value_conv.weight',
    'mrla.lambda_t': 'mrla.lambda_t',
}


class CheckpointError(ValueError):
    """A file that is not, or not entirely, an MRLA checkpoint."""


def check_format(fmt: str, keep_head: bool) -> None:
    """Require ``fmt`` to be one of :data:`FORMATS` and ``keep_head`` only
    with the mmpretrain format, whose classifier has a head."""
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    if keep_head and fmt != 'mmpretrain':
        raise ValueError('keep_head=True needs fmt="mmpretrain": a bare '
                         f'backbone ({fmt!r} format) has no classifier')


def backbone_prefix(fmt: str) -> str:
    """Key prefix of the backbone: bare keys for a backbone's ``init_cfg``
    (mmdet format), ``backbone.`` in an ``ImageClassifier`` (mmpretrain)."""
    return 'backbone.' if fmt == 'mmpretrain' else ''
