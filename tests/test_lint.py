import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_ruff_clean():
    out = subprocess.run([sys.executable, '-m', 'ruff', 'check', ROOT],
                         capture_output=True,
                         text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
