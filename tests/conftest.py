"""Test setup: 8 host CPU devices, so sharded code runs on a laptop CPU.

The flag must be set before JAX initialises its backends, hence at import of
this conftest (pytest imports it before any test module).
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The inference commands run in-process here: keep them off the user's compilation
# cache (the cache test turns it on in its own subprocesses).
os.environ.setdefault("JAXFACE_COMPILE_CACHE", "0")

import sys  # noqa: E402

# torch (the test extra's reference for pretrained backbones) imports the `triton`
# package when it is installed, and triton segfaults the process when TensorFlow was
# imported before it (their bundled LLVMs clash). The suite runs on CPU and never uses
# triton, so it is blocked: `import triton` raises ImportError and torch goes without.
sys.modules.setdefault("triton", None)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# Real data lives outside the project, never inside it: $JAXFACE_DATA (the variable the
# configs read), $JAXFACE_SHARED_DATA, or ../shared/data beside the checkout.
SHARED_DATA = pathlib.Path(
    os.environ.get("JAXFACE_DATA")
    or os.environ.get("JAXFACE_SHARED_DATA")
    or REPO.parent / "shared" / "data"
)


def shared_data(*parts: str) -> pathlib.Path:
    """Path under the real-data folder; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path


@pytest.fixture
def real_data(monkeypatch):
    """`shared_data`, with JAXFACE_DATA pointing at the real-data folder so that the
    configs' real-data variants find it."""
    monkeypatch.setenv("JAXFACE_DATA", str(SHARED_DATA))
    return shared_data
