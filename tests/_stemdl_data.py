"""Tiny STEMDL data shared by the tests/test_stemdl_*.py modules (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

from scibench_data.synthetic.stemdl import SyntheticSTEMDL, generate

#: 3 classes x 3 materials x 2 samples, 32x32 patterns, 4 samples per raw file: ~0.5 s to write.
TINY = SyntheticSTEMDL(n_classes=3, materials_per_class=3, samples_per_material=2, pattern=32, npz_size=16,
                       samples_per_file=4)


def write_tiny(folder: Path, layout: str, config: SyntheticSTEMDL = TINY) -> Path:
    """Generate ``config`` in ``layout`` under ``folder/layout`` once; returns that folder."""
    dest = folder / layout
    if not dest.exists():
        generate(dest, layout, config)
    return dest
