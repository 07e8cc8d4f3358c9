"""``import rsmae`` is enough for ``timm.create_model("rsmae_...")``, in either import order, and still
imports no torch while timm is not imported (fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("imports", ["import rsmae; import timm", "import timm; import rsmae",
                                     "import rsmae.models; import timm"])
@pytest.mark.slow
def test_import_rsmae_registers_the_timm_models(imports: str) -> None:
    out = _run(f"{imports}\n"
               "enc = timm.create_model('rsmae_vit_test', in_chans=4, img_size=32, patch_size=8)\n"
               "mae = timm.create_model('rsmae_mae_vit_test.img_size=32,patch_size=8', in_chans=4)\n"
               "print(type(enc).__name__, type(mae).__name__, type(timm.__spec__.loader).__name__)")
    assert out == "VisionTransformer MaskedAutoencoder SourceFileLoader"  # timm keeps its own loader


def test_import_rsmae_alone_imports_no_torch() -> None:
    out = _run("import sys, rsmae, rsmae.tiling\n"
               "print(sorted(m for m in ('torch', 'timm', 'rsmae.models') if m in sys.modules))")
    assert out == "[]"


@pytest.mark.slow
def test_without_rsmae_timm_does_not_know_them() -> None:  # the tests above can fail
    assert _run("import timm; print(timm.is_model('rsmae_vit_test'))") == "False"
