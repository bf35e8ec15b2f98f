"""The benchmark scripts run and report what they claim (no timing is
asserted: speed is judged from their output, not by tests)."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('| ') and cells[0] not in ('variant', '---'):
            rows[cells[0]] = cells[1:]
    return rows


def test_backbone_benchmark_table_and_memory():
    out = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark_backbone.py', '--batch',
         '2', '--size', '64', '--threads', '1', '--warmup', '0',
         '--repeats', '1', '--amp', 'bf16', '--memory', '--ops',
         '--variants', 'plain', 'light', 'base', 'light-slim', 'base-slim'],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    assert 'autocast bf16' in out.stdout and 'malloc:' in out.stdout
    rows = _rows(out.stdout)
    assert list(rows) == ['plain', 'light', 'base', 'light-slim', 'base-slim']
    # infer s, ratio, train s, ratio, saved MiB, ratio, peak MiB, ratio,
    # ops, ratio
    assert rows['plain'][1] == '1.000x' and rows['plain'][5] == '1.000x'
    assert rows['plain'][7] == '1.000x' and rows['plain'][9] == '1.000x'
    saved = {v: float(r[4]) for v, r in rows.items()}
    peak = {v: float(r[6]) for v, r in rows.items()}
    # MRLA keeps more for the backward than the plain network; base
    # (deep stem, value maps live through its stage's pass) peaks highest.
    assert saved['plain'] < saved['light']
    assert saved['plain'] < saved['base']
    assert 0 < peak['plain'] < peak['light'] < peak['base']
    # Blocks that rebuild MRLA's input hold one map fewer each (at this
    # size the weights and their gradients dominate the peak; the maps
    # are measured exactly in test_batch_norm_add_relu.py).
    assert saved['light-slim'] < saved['light']
    assert saved['base-slim'] < saved['base']
    # ResNet-50's training step: 53 convolutions and norms, each with its
    # backward, at least; every MRLA block adds its own calls.
    ops = {v: int(r[8]) for v, r in rows.items()}
    assert 4 * 53 < ops['plain'] < ops['light'] and ops['plain'] < ops['base']
    assert rows['light'][9] == f"{ops['light'] / ops['plain']:.3f}x"
