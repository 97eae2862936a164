"""Losses, ops and evaluation protocols import without the trainer or TensorFlow."""

import subprocess
import sys


def test_losses_ops_evaluation_import_alone():
    code = (
        "import sys\n"
        "import jaxface.losses, jaxface.ops, jaxface.evaluation.widerface\n"
        "import jaxface.evaluation.attributes, jaxface.evaluation.verification\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'jaxface.train', 'orbax.checkpoint')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
