"""Synthetic STEMDL samples in both layouts: CBED stacks whose geometry carries the space group.

A toy crystallography, deterministic from seeds:

* **Class (space group)**: the crystal system follows the space-group number
  (triclinic 1-2 ... cubic 195-230) and fixes which cell lengths and angles are
  equal; the cell lengths, angles and lattice centering (P, C, I, F) are drawn
  from a seed that depends on the space group only, so every seed shares them.
* **Material**: the class's cell scaled by ~2 % and 1-4 atoms of random
  scattering power (one heavy, the others at most half as strong) at random
  fractional positions, the heavy one on the origin
  (so disk intensities differ, and the potential's origin is defined).
* **Sample**: three zone axes [001], [100], [010] of one material: each
  pattern is the 2-D reciprocal lattice of that projection, drawn as disks of
  intensity ``|F(g)|^2 exp(-2 B |g|^2)`` (F the structure factor of the
  projected atoms, centering extinctions included), a diffuse background,
  a small in-plane rotation and centre shift, normalised to unit sum, then
  Poisson noise at a random dose. Intensities span orders of magnitude, as
  real ones do, which is what the reference log scaling is for.
* **Target** (our addition, dataset ``potential`` (1, H, W)): the projected
  potential along [001] over a 16 A field of view, the Fourier sum of the same
  structure factors: consistent with pattern 0 by construction.

Materials are split across ``train``/``dev``/``test`` within each class, so
every split holds every class but no material is in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from scibench_data.formats.stemdl import (
    LAYOUTS,
    N_CLASSES,
    PREPROCESSED_SIZE,
    RAW_PATTERN,
    preprocess_stack,
)
from scibench_data.formats.synthetic_marker import write_marker
from scibench_data.progress import bar_disable

SPLIT_ORDER = ("train", "dev", "test")
#: Pixels per inverse angstrom, as a fraction of the pattern size.
CAMERA = 0.45
FIELD_OF_VIEW_A = 16.0
_CENTERING = {
    "P": [(0.0, 0.0, 0.0)],
    "C": [(0.0, 0.0, 0.0), (0.5, 0.5, 0.0)],
    "I": [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5)],
    "F": [(0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)],
}
#: Which (lengths, angle, coordinates) each zone axis projects onto.
_PROJECTIONS = (((0, 1), 5, (0, 1)), ((1, 2), 3, (1, 2)), ((0, 2), 4, (0, 2)))


@dataclass(frozen=True)
class SyntheticSTEMDL:
    """How many samples to draw and how big. Full-size patterns (512) by default; small ones for tests."""

    n_classes: int = 20
    materials_per_class: int = 5
    samples_per_material: int = 4
    pattern: int = RAW_PATTERN
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    samples_per_file: int = 64
    npz_size: int = PREPROCESSED_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= N_CLASSES - 1:
            raise ValueError(f"n_classes must be in 1..{N_CLASSES - 1}, got {self.n_classes}")
        if self.materials_per_class < 3:
            raise ValueError(f"materials_per_class must be >= 3 (one per split), got {self.materials_per_class}")
        if self.samples_per_material < 1 or self.samples_per_file < 1:
            raise ValueError("samples_per_material and samples_per_file must be >= 1")
        if self.pattern < 32 or self.npz_size < 8:
            raise ValueError(f"pattern must be >= 32 and npz_size >= 8, got {self.pattern}, {self.npz_size}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-9:
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}")

    @property
    def space_groups(self) -> list[int]:
        """The classes drawn: space-group numbers spread evenly over 1..230."""
        return [int(v) for v in np.linspace(1, 230, self.n_classes).round()] if self.n_classes > 1 else [1]

    @property
    def n_samples(self) -> int:
        return self.n_classes * self.materials_per_class * self.samples_per_material


@dataclass(frozen=True)
class Lattice:
    """A unit cell (lengths in angstrom, angles in degrees) and its centering."""

    lengths: tuple[float, float, float]
    angles: tuple[float, float, float]  # alpha, beta, gamma
    centering: str


@dataclass(frozen=True)
class Material:
    """One material: its cell and atoms (fractional positions, scattering factors)."""

    material_id: str
    space_group: int
    lattice: Lattice
    positions: np.ndarray  # (n_atoms, 3)
    scattering: np.ndarray  # (n_atoms,)


def crystal_system(space_group: int) -> str:
    """The crystal system of a space-group number (1..230)."""
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group must be in 1..230, got {space_group}")
    for last, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                       (167, "trigonal"), (194, "hexagonal")):
        if space_group <= last:
            return name
    return "cubic"


def class_lattice(space_group: int) -> Lattice:
    """The cell shared by every material of a space group (seeded by the group alone)."""
    rng = np.random.default_rng([7919, space_group])
    system = crystal_system(space_group)
    a, b, c = rng.uniform(3.0, 7.0, 3)
    al, be, ga = rng.uniform(65.0, 115.0, 3)
    centerings = {"triclinic": "P", "monoclinic": "PC", "orthorhombic": "PCIF", "tetragonal": "PI",
                  "trigonal": "P", "hexagonal": "P", "cubic": "PIF"}[system]
    centering = centerings[int(rng.integers(len(centerings)))]
    if system == "monoclinic":
        al = ga = 90.0
    elif system in ("orthorhombic", "tetragonal", "cubic"):
        al = be = ga = 90.0
    elif system in ("trigonal", "hexagonal"):
        al, be, ga = 90.0, 90.0, 120.0
    if system in ("tetragonal", "trigonal", "hexagonal"):
        b = a
    elif system == "cubic":
        b = c = a
    return Lattice((float(a), float(b), float(c)), (float(al), float(be), float(ga)), centering)


def draw_material(space_group: int, index: int, seed: int) -> Material:
    rng = np.random.default_rng([seed, space_group, index])
    base = class_lattice(space_group)
    scale = 1.0 + rng.normal(0.0, 0.02)
    n_atoms = int(rng.integers(1, 5))
    a, b, c = base.lengths
    lattice = Lattice((a * scale, b * scale, c * scale), base.angles, base.centering)
    positions = rng.uniform(0.0, 1.0, (n_atoms, 3))
    positions[0] = 0.0  # the heaviest atom on the origin: fixes the translation intensities cannot tell
    scattering = np.sort(rng.uniform(3.0, 60.0, n_atoms) ** 0.7)[::-1]
    scattering[1:] *= 0.5  # light atoms beside one heavy one: the lattice dominates the potential
    return Material(material_id=f"sg{space_group:03d}-m{index:02d}", space_group=space_group, lattice=lattice,
                    positions=positions, scattering=scattering)


def projection_cell(material: Material, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Real 2-D cell vectors ``A`` (rows, angstrom) of zone axis ``axis`` and the projected
    fractional atom positions, centering copies included."""
    (i, j), angle_idx, (u, v) = _PROJECTIONS[axis]
    lengths, angles = material.lattice.lengths, material.lattice.angles
    p, q, theta = lengths[i], lengths[j], np.deg2rad(angles[angle_idx - 3])
    cell = np.array([[p, 0.0], [q * np.cos(theta), q * np.sin(theta)]])
    shifts = np.array(_CENTERING[material.lattice.centering])
    atoms = (material.positions[:, None, :] + shifts[None, :, :]) % 1.0  # (atoms, copies, 3)
    return cell, atoms[..., [u, v]].reshape(-1, 2)


def structure_factors(material: Material, axis: int, hmax: int) -> np.ndarray:
    """``F(h, k)`` for ``-hmax <= h, k <= hmax`` of one projection, complex ``(2hmax+1, 2hmax+1)``."""
    _, frac = projection_cell(material, axis)
    f = np.repeat(material.scattering, len(_CENTERING[material.lattice.centering]))
    hs = np.arange(-hmax, hmax + 1)
    phase_h = np.exp(2j * np.pi * hs[:, None] * frac[None, :, 0])  # (H, atoms)
    phase_k = np.exp(2j * np.pi * hs[:, None] * frac[None, :, 1])
    return np.einsum("a,ha,ka->hk", f, phase_h, phase_k)


def cbed_pattern(material: Material, axis: int, size: int, rng: np.random.Generator, thickness: float,
                 rotation_deg: float, shift: tuple[float, float], dose: float, hmax: int = 16) -> np.ndarray:
    """One noisy CBED pattern ``(size, size)`` float32, normalised to unit sum before noise."""
    cell, _ = projection_cell(material, axis)
    recip = np.linalg.inv(cell).T  # rows b1, b2 (1/angstrom)
    rot = np.deg2rad(rotation_deg)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    recip = recip @ r.T
    scale = CAMERA * size  # pixels per 1/angstrom
    spacing = scale * min(np.linalg.norm(recip, axis=1))
    radius = 0.35 * spacing
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    q = np.stack([xx - size / 2 - shift[1], yy - size / 2 - shift[0]], axis=-1).reshape(-1, 2) / scale
    frac = q @ np.linalg.inv(recip)
    base = np.rint(frac).astype(int)
    F = structure_factors(material, axis, hmax)
    damping_b = 0.5 * thickness
    out = np.zeros(len(q))
    for dh in (-1, 0, 1):
        for dk in (-1, 0, 1):
            hk = base + np.array([dh, dk])
            g = hk @ recip
            inside = (np.abs(hk) <= hmax).all(axis=1)
            fk = F[np.clip(hk[:, 0] + hmax, 0, 2 * hmax), np.clip(hk[:, 1] + hmax, 0, 2 * hmax)]
            intensity = np.where(inside, np.abs(fk) ** 2, 0.0) * np.exp(-2 * damping_b * (g**2).sum(1))
            d = np.linalg.norm(q - g, axis=1) * scale
            disk = 1.0 / (1.0 + np.exp(np.clip((d - radius) / 0.6, -50, 50)))
            fringes = 1.0 + 0.3 * np.cos(2 * np.pi * thickness * d / max(radius, 1.0))
            out += disk * fringes * intensity
    qn = np.linalg.norm(q, axis=1)
    out += 1e-3 * np.abs(F[hmax, hmax]) ** 2 * np.exp(-qn / 0.4)
    out /= out.sum()
    noisy = rng.poisson(out * dose) / dose
    return noisy.reshape(size, size).astype(np.float32)


def projected_potential(material: Material, size: int, fov: float = FIELD_OF_VIEW_A, sigma: float = 0.8) -> np.ndarray:
    """The [001] projected potential over ``fov`` angstrom, ``(size, size)`` float32, mean ~1:
    the Fourier sum of the structure factors of pattern 0 with a Gaussian atom shape."""
    cell, _ = projection_cell(material, 0)
    hmax = int(np.ceil(1.6 * max(np.linalg.norm(cell, axis=1)))) + 1
    F = structure_factors(material, 0, hmax)
    recip = np.linalg.inv(cell).T
    hs = np.arange(-hmax, hmax + 1)
    g = hs[:, None, None] * recip[0] + hs[None, :, None] * recip[1]
    coeff = F * np.exp(-2 * np.pi**2 * sigma**2 * (g**2).sum(-1)) / F[hmax, hmax].real
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) * (fov / size)
    r = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    frac = r @ np.linalg.inv(cell)
    e1 = np.exp(2j * np.pi * hs[:, None] * frac[None, :, 0])  # (H, P)
    e2 = np.exp(2j * np.pi * hs[:, None] * frac[None, :, 1])  # (K, P)
    v = np.einsum("hp,hp->p", e1, coeff @ e2).real
    return v.reshape(size, size).astype(np.float32)


def draw_sample(material: Material, index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``cbed_stack`` (3, size, size) and ``potential`` (1, size, size) of one sample."""
    rng = np.random.default_rng([seed, material.space_group, int(material.material_id[-2:]), index, 1])
    thickness = rng.uniform(0.6, 1.4)
    rotation = rng.uniform(-4.0, 4.0)
    sy, sx = rng.uniform(-1.0, 1.0, 2)
    shift = (float(sy), float(sx))
    dose = 10 ** rng.uniform(6.0, 7.0)
    stack = np.stack([cbed_pattern(material, axis, size, rng, thickness, rotation, shift, dose)
                      for axis in range(3)])
    return stack, projected_potential(material, size)[None]


def assign_splits(config: SyntheticSTEMDL) -> dict[str, str]:
    """Material id -> split: within each class, materials shuffled and cut by ``split_fractions``
    (at least one material per split), so every split has every class and no material is shared."""
    out = {}
    _, f_dev, f_test = config.split_fractions
    m = config.materials_per_class
    n_dev, n_test = max(1, round(f_dev * m)), max(1, round(f_test * m))
    n_train = m - n_dev - n_test
    if n_train < 1:
        raise ValueError(f"split_fractions {config.split_fractions} leave no training material out of {m}")
    for sg in config.space_groups:
        order = np.random.default_rng([config.seed, sg, 99]).permutation(m)
        for rank, j in enumerate(order):
            split = "train" if rank < n_train else ("dev" if rank < n_train + n_dev else "test")
            out[f"sg{sg:03d}-m{int(j):02d}"] = split
    return out


def _samples(config: SyntheticSTEMDL):
    """(split, material, sample index) in write order: split, then class, then material."""
    splits = assign_splits(config)
    for split in SPLIT_ORDER:
        for sg in config.space_groups:
            for j in range(config.materials_per_class):
                mat = draw_material(sg, j, config.seed)
                if splits[mat.material_id] == split:
                    for s in range(config.samples_per_material):
                        yield split, mat, s


def generate(dest: str | Path, layout: str, config: SyntheticSTEMDL = SyntheticSTEMDL(),
             progress: bool = False) -> list[Path]:
    """Write ``config.n_samples`` samples of ``layout`` (``raw`` or ``npz``) into ``dest/{train,dev,test}/``.

    Files are written under a temporary name and renamed. Returns the files written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown STEMDL layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_marker(dest, __name__)
    paths: list[Path] = []
    pending: dict[str, list] = {s: [] for s in SPLIT_ORDER}
    counts = dict.fromkeys(SPLIT_ORDER, 0)
    bar = tqdm(total=config.n_samples, desc=f"generate stemdl {layout}", unit="sample", disable=bar_disable(progress))
    for i, (split, mat, s) in enumerate(_samples(config)):
        (dest / split).mkdir(parents=True, exist_ok=True)
        stack, potential = draw_sample(mat, s, config.pattern, config.seed)
        if layout == "npz":
            paths.append(write_npz_sample(dest / split / f"sample-{i}.npz", stack, mat, config.npz_size))
        else:
            pending[split].append((f"{mat.material_id}_{s:03d}", mat, stack, potential))
            if len(pending[split]) == config.samples_per_file:
                paths.append(write_raw_file(dest / split / f"stemdl_{split}_{counts[split]:04d}.h5", pending[split]))
                counts[split] += 1
                pending[split] = []
        bar.update(1)
    bar.close()
    for split, rows in pending.items():
        if rows:
            paths.append(write_raw_file(dest / split / f"stemdl_{split}_{counts[split]:04d}.h5", rows))
    return paths


def write_raw_file(path: Path, rows: list) -> Path:
    """One raw HDF5 file: a group per sample with ``space_group``, ``cbed_stack`` and our ``potential``."""
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for name, mat, stack, potential in rows:
            g = f.create_group(name)
            g.attrs["space_group"] = np.int64(mat.space_group)
            g.attrs["material"] = mat.material_id
            g.create_dataset("cbed_stack", data=stack.astype(np.float32))
            g.create_dataset("potential", data=potential.astype(np.float32))
    tmp.rename(path)
    return path


def write_npz_sample(path: Path, stack: np.ndarray, material: Material, size: int) -> Path:
    """One ``sample-{i}.npz``: ``data`` preprocessed (3, size, size) float32, ``label`` (1,), our ``material``."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.savez(f, data=preprocess_stack(stack, size), label=np.array([material.space_group], dtype=np.int64),
                 material=np.array(material.material_id))
    tmp.rename(path)
    return path
