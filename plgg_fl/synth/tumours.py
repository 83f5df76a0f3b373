"""Tumour models, placed in MNI space (mm): adult glioblastoma-like and pediatric low-grade glioma.

Locations (MNI 2009a mm; each draw adds Gaussian jitter, clipped at 1.5 sd; ``±x`` = either side):

=========================  ====================  ============  =========
location                   centre (x, y, z) mm   jitter sd mm  share
=========================  ====================  ============  =========
pLGG cerebellar hemisphere (±25, -62, -35)       (5, 6, 5)     38 %
pLGG vermis / 4th ventr.   (0, -64, -28)         (3, 5, 4)     24 %
pLGG brainstem (pons)      (0, -26, -30)         (2, 3, 5)     10 %
pLGG optic / hypothalamus  (0, -2, -12)          (2, 3, 2)     14 %
pLGG thalamus              (±12, -18, 6)         (3, 3, 3)     14 %
adult frontal WM           (±28, 20, 25)         (6, 8, 6)
adult centrum semiovale    (±26, -15, 30)        (6, 8, 6)
adult parietal WM          (±30, -45, 35)        (6, 6, 6)
adult temporal WM          (±40, -8, -4)         (4, 5, 4)
adult occipital WM         (±25, -72, 15)        (5, 5, 5)
=========================  ====================  ============  =========

Posterior fossa (infratentorial) here means ``y < -18 and z < -12`` mm; the first three pLGG
locations lie inside it (72 % of pLGG), every adult location outside it with a margin.

Shapes are ellipsoids with a smooth random surface (``rough`` = relative radius modulation).
Adults: enhancing rim around a necrotic core (BraTS labels 4 and 1) inside a larger, irregular
oedema shell confined mostly to white matter (label 2), with mass effect. pLGG: well circumscribed,
solid (T2 bright) or a cyst (near CSF signal) with a solid mural nodule; binary mask = whole
tumour including the cyst; sometimes a faint unlabelled peritumoural T2 halo; little mass effect;
half of cerebellar/vermian tumours come with obstructive hydrocephalus (ventricles widened 2-6 mm).
Intensities are relative to CSF = 1 (the scanner model maps them to stored units).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

INFRA_Y_MM, INFRA_Z_MM = -18.0, -12.0


def is_infratentorial(p_mni) -> bool:
    """True if an MNI point (mm) lies in this model's posterior fossa box (below the tentorium)."""
    return bool(p_mni[1] < INFRA_Y_MM and p_mni[2] < INFRA_Z_MM)


# name: (centre mm, jitter sd mm, mirror left/right, probability)
PLGG_LOCATIONS = {
    "cerebellar_hemisphere": ((25, -62, -35), (5, 6, 5), True, 0.38),
    "vermis": ((0, -64, -28), (3, 5, 4), False, 0.24),
    "brainstem": ((0, -26, -30), (2, 3, 5), False, 0.10),
    "optic_hypothalamic": ((0, -2, -12), (2, 3, 2), False, 0.14),
    "thalamus": ((12, -18, 6), (3, 3, 3), True, 0.14),
}
ADULT_LOCATIONS = {
    "frontal_wm": ((28, 20, 25), (6, 8, 6), True, 0.25),
    "centrum_semiovale": ((26, -15, 30), (6, 8, 6), True, 0.2),
    "parietal_wm": ((30, -45, 35), (6, 6, 6), True, 0.2),
    "temporal_wm": ((40, -8, -4), (4, 5, 4), True, 0.2),
    "occipital_wm": ((25, -72, 15), (5, 5, 5), True, 0.15),
}


@dataclass(frozen=True)
class Blob:
    """A rough ellipsoid. ``radii`` in mm; ``norm(p)`` < 1 inside; ``dist(p)`` ~ signed distance in mm."""

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    rough: float
    lattice: np.ndarray  # 6^3 smooth noise lattice over the normalised box [-1.5, 1.5]^3

    @classmethod
    def random(cls, rng, centre, radii, rough) -> "Blob":
        rot = Rotation.from_euler("xyz", rng.uniform(-25, 25, 3), degrees=True).as_matrix()
        return cls(np.asarray(centre, float), np.asarray(radii, float), rot, float(rough), rng.normal(0, 1, (6, 6, 6)))

    def norm(self, p: np.ndarray) -> np.ndarray:
        """Normalised radius ``|R^T (p - c) / radii| - rough * noise`` (noise clipped to ±2), float32."""
        d = [p[i] - np.float32(self.centre[i]) for i in range(3)]
        q = np.stack([sum(np.float32(self.rot[j, i] / self.radii[i]) * d[j] for j in range(3)) for i in range(3)])
        r = np.sqrt((q * q).sum(0))
        noise = ndimage.map_coordinates(self.lattice, (q + 1.5) * np.float32(5 / 3.0), order=1, mode="nearest")
        return r - np.float32(self.rough) * np.clip(noise, -2, 2)

    def dist(self, p: np.ndarray) -> np.ndarray:
        return (self.norm(p) - 1.0) * float(self.radii.mean())


@dataclass
class Tumour:
    """One tumour: location (name, MNI centre), layers, intensities and mass effect."""

    kind: str  # "adult" | "plgg"
    location: str
    centre: np.ndarray
    parts: dict[str, Blob]
    intensity: dict[str, float]
    mass_effect: float  # fraction of radial compression at the centre
    necrosis: float = 0.0  # adult: core norm radius below which the core is necrotic
    halo: float = 0.0  # pLGG: extra T2 signal of an unlabelled 3 mm peritumoural halo
    hydrocephalus_mm: float = 0.0  # pLGG in the posterior fossa: ventricles widened by this much (mm)
    info: dict = field(default_factory=dict)

    @property
    def extent_mm(self) -> float:
        """Radius (mm) around ``centre`` that contains every part (with roughness margin)."""
        return max(np.linalg.norm(b.centre - self.centre) + b.radii.max() * (1 + 2 * b.rough) for b in self.parts.values())

    def displace(self, u: np.ndarray) -> np.ndarray:
        """Mass effect: template coordinates (mm) whose tissue appears at subject points ``u`` (3, ...)."""
        if self.mass_effect <= 0:
            return u
        s = np.float32(1.2 * max(b.radii.mean() for b in self.parts.values()))
        c = self.centre.astype(np.float32)[:, None, None, None]
        d = u - c
        k = 1.0 - np.float32(self.mass_effect) * np.exp(-(d**2).sum(0) / (s * s))
        return c + d * k

    def whole_dist(self, u: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) to the whole-tumour boundary (pLGG: all parts)."""
        return np.minimum.reduce([b.dist(u) for b in self.parts.values()])


def _place(rng, table) -> tuple[str, np.ndarray]:
    names = list(table)
    p = np.array([table[n][3] for n in names], float)
    name = names[rng.choice(len(names), p=p / p.sum())]
    centre, jitter, mirror, _ = table[name]
    c = np.asarray(centre, float) + np.clip(rng.normal(0, 1, 3), -1.5, 1.5) * np.asarray(jitter, float)
    if mirror and rng.random() < 0.5:
        c[0] = -c[0]
    return name, c


def sample_adult(rng: np.random.Generator) -> Tumour:
    """A large supratentorial glioma: necrotic core (1), enhancing rim (4), oedema (2)."""
    loc, c = _place(rng, ADULT_LOCATIONS)
    r0 = rng.uniform(12, 22)
    core = Blob.random(rng, c, r0 * rng.uniform(0.8, 1.2, 3), 0.15)
    oedema = Blob.random(rng, c + rng.normal(0, 3, 3), core.radii * rng.uniform(1.4, 2.1), 0.3)
    necrosis = rng.uniform(0.35, 0.7) if rng.random() < 0.85 else 0.0
    inten = {"oedema": rng.uniform(0.62, 0.76), "enhancing": rng.uniform(0.5, 0.62), "necrosis": rng.uniform(0.84, 0.97)}
    return Tumour("adult", loc, c, {"oedema": oedema, "core": core}, inten, rng.uniform(0.3, 0.5), necrosis=necrosis)


def sample_plgg(rng: np.random.Generator) -> Tumour:
    """A pediatric low-grade glioma: solid, or cyst + mural nodule; binary whole-tumour mask."""
    loc, c = _place(rng, PLGG_LOCATIONS)
    p_cyst = {"cerebellar_hemisphere": 0.6, "vermis": 0.45, "optic_hypothalamic": 0.1}.get(loc, 0.25)
    solid_i = rng.uniform(0.64, 0.8)
    if loc == "optic_hypothalamic":  # fusiform, along the chiasm (x)
        radii = np.array([rng.uniform(13, 20), rng.uniform(7, 11), rng.uniform(6, 9)])
        parts = {"solid": Blob.random(rng, c, radii, 0.08)}
    elif loc == "brainstem":  # elongated along the brainstem (z)
        radii = np.array([rng.uniform(9, 13), rng.uniform(9, 13), rng.uniform(12, 18)])
        parts = {"solid": Blob.random(rng, c, radii, 0.08)}
    elif rng.random() < p_cyst:
        rc = rng.uniform(15, 28)
        cyst = Blob.random(rng, c, rc * rng.uniform(0.85, 1.15, 3), 0.04)
        direction = rng.normal(0, 1, 3)
        direction /= np.linalg.norm(direction)
        rn = rng.uniform(0.3, 0.5) * rc
        nodule = Blob.random(rng, c + direction * rc * 0.8, rn * rng.uniform(0.8, 1.2, 3), 0.12)
        parts = {"cyst": cyst, "solid": nodule}
    else:
        parts = {"solid": Blob.random(rng, c, rng.uniform(12, 24) * rng.uniform(0.8, 1.2, 3), 0.08)}
    inten = {"solid": solid_i, "cyst": rng.uniform(0.88, 0.98)}
    halo = rng.uniform(0.05, 0.12) if rng.random() < 0.2 else 0.0
    hydro = rng.uniform(2.0, 6.0) if loc in ("cerebellar_hemisphere", "vermis") and rng.random() < 0.5 else 0.0
    return Tumour("plgg", loc, c, parts, inten, rng.uniform(0.1, 0.25), halo=halo, hydrocephalus_mm=hydro)


def _ramp(d: np.ndarray, width_mm: float = 1.5) -> np.ndarray:
    """Partial-volume weight from a signed distance (mm): 1 inside, 0 outside, linear over ``width_mm``."""
    return np.clip(0.5 - d / width_mm, 0.0, 1.0)


def render(t: Tumour, u: np.ndarray, tissue: np.ndarray, wm: np.ndarray, texture: np.ndarray):
    """Paint tumour ``t`` over ``tissue`` (clean CSF-relative T2) at subject points ``u`` (3, ...).

    ``wm``: white-matter probability at the displaced points; ``texture``: smooth noise ~N(0, 1).
    Returns (image float32, labels uint8: BraTS 1/2/4 for adults, 1 for pLGG).
    """
    img = tissue.astype(np.float32).copy()
    lab = np.zeros(tissue.shape, np.uint8)
    tex = 1.0 + 0.06 * texture
    if t.kind == "adult":
        n_ed = t.parts["oedema"].norm(u)
        a_ed = _ramp((n_ed - 1.0) * t.parts["oedema"].radii.mean(), 3.0) * np.clip((wm - 0.2) / 0.3 + (n_ed < 0.6), 0, 1)
        n_core = t.parts["core"].norm(u)
        r = t.parts["core"].radii.mean()
        a_core = _ramp((n_core - 1.0) * r)
        a_nec = _ramp((n_core - t.necrosis) * r, 2.0) if t.necrosis > 0 else np.zeros_like(a_core)
        for a, name in ((a_ed, "oedema"), (a_core, "enhancing"), (a_nec, "necrosis")):
            img = img * (1 - a) + np.float32(t.intensity[name]) * tex * a
        lab[a_ed >= 0.5] = 2
        lab[n_core < 1.0] = 4
        if t.necrosis > 0:
            lab[n_core < t.necrosis] = 1
    else:
        d_all = t.whole_dist(u)
        if t.halo > 0:
            img = img + np.float32(t.halo) * np.clip(1 - d_all / 3.0, 0, 1) * (d_all > 0)
        for name in ("cyst", "solid"):
            if name in t.parts:
                a = _ramp(t.parts[name].dist(u))
                img = img * (1 - a) + np.float32(t.intensity[name]) * (tex if name == "solid" else 1.0) * a
        lab[d_all < 0] = 1
    return img.astype(np.float32), lab


def rater_masks(t: Tumour, u: np.ndarray, rng: np.random.Generator, n: int = 3) -> list[np.ndarray]:
    """``n`` expert delineations of a pLGG: truth boundary moved by a per-rater bias and a smooth random field.

    Shifts scale with tumour size (about 9 % of the mean radius, biases ±5 %), calibrated so mean
    pairwise Dice is about 0.85, as between real experts. Returns boolean arrays.
    """
    d = t.whole_dist(u)
    r = float(np.mean([b.radii.mean() for b in t.parts.values()]))
    ext = t.extent_mm
    out = []
    biases = rng.permutation([-0.05, 0.0, 0.05])[:n] if n == 3 else rng.normal(0, 0.05, n)
    for b in biases:
        lattice = rng.normal(0, 1, (7, 7, 7))
        idx = (u - t.centre.astype(np.float32)[:, None, None, None] + ext) / (2 * ext) * 6
        field = ndimage.map_coordinates(lattice, idx, order=3, mode="nearest")
        shift = r * (b + 0.09 * field) + rng.normal(0, 0.3)
        out.append(d + shift < 0)
    return out
