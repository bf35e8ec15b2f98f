"""ONNX export of MRLA models and its check in onnxruntime."""
from .dense_detector import (
    DenseDetectorExport,
    match_detections,
    predict_parity,
)
from .export_target import ExportTarget, build_export_target
from .onnx_export import (
    ExportError,
    custom_operators,
    export_onnx,
    max_rel_error,
    run_onnxruntime,
)

__all__ = [
    'DenseDetectorExport', 'ExportError', 'ExportTarget',
    'build_export_target', 'custom_operators', 'export_onnx',
    'match_detections', 'max_rel_error', 'predict_parity', 'run_onnxruntime'
]
