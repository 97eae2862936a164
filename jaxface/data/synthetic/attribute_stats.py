"""CelebA's 40 attributes as a label model: embedded positive rates and a Gaussian copula.

:func:`sample_attributes` draws one CelebA-like attribute vector whose marginals are
CelebA's (per gender); :mod:`jaxface.data.synthetic.attributes` draws the face.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from jaxface.data.attribute_names import CELEBA_ATTRIBUTES
from jaxface.data.synthetic.common import example_rng

# --------------------------------------------------------------------------------------
# CelebA attribute statistics (embedded: the source file is not shipped).
# --------------------------------------------------------------------------------------

# CelebA's 40 attributes in the order of list_attr_celeba.txt (its line 2).
ATTRIBUTE_NAMES = CELEBA_ATTRIBUTES
NUM_ATTRIBUTES = 40
A = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}

# Positive rate of each attribute (fraction of rows == 1), same order as ATTRIBUTE_NAMES.
# Source: the first 20,000 rows (images 000001.jpg-020000.jpg) of CelebA's
# list_attr_celeba.txt (202,599 rows).
CELEBA_ATTRIBUTE_RATES = (
    0.11225,
    0.26425,
    0.51310,
    0.20460,
    0.02320,
    0.15145,
    0.23860,
    0.23740,
    0.24265,
    0.14885,
    0.05175,
    0.20320,
    0.14405,
    0.05710,
    0.04635,
    0.06460,
    0.06250,
    0.04190,
    0.38490,
    0.45000,
    0.42155,
    0.47910,
    0.03935,
    0.11580,
    0.83210,
    0.27880,
    0.04315,
    0.27625,
    0.07800,
    0.06335,
    0.05840,
    0.47935,
    0.21235,
    0.31615,
    0.18630,
    0.04975,
    0.47105,
    0.12200,
    0.07405,
    0.77990,
)
# P(attribute == 1 | Male == 1) over the same 20,000 rows (8,431 of them Male); with the
# marginal rates above it fixes P(attribute | female) too, so sampling Male first and the
# rest conditionally keeps every marginal rate exact (beards on men, lipstick on women).
CELEBA_RATES_GIVEN_MALE = (
    0.26616,
    0.05219,
    0.27636,
    0.34148,
    0.05492,
    0.08315,
    0.15075,
    0.42439,
    0.29652,
    0.02206,
    0.05942,
    0.15206,
    0.24315,
    0.11908,
    0.09667,
    0.11991,
    0.14814,
    0.08599,
    0.00308,
    0.30554,
    1.00000,
    0.42273,
    0.09335,
    0.12537,
    0.60325,
    0.22358,
    0.02716,
    0.16072,
    0.11659,
    0.00451,
    0.13854,
    0.40055,
    0.24090,
    0.13925,
    0.01459,
    0.08409,
    0.00593,
    0.01791,
    0.17519,
    0.64132,
)


def _conditional_rates():
    p = np.asarray(CELEBA_ATTRIBUTE_RATES, np.float64)
    pm = np.asarray(CELEBA_RATES_GIVEN_MALE, np.float64)
    male = p[A["Male"]]
    pf = np.clip((p - male * pm) / (1.0 - male), 0.0, 1.0)
    pm = pm.copy()
    pf[A["Male"]] = 0.0
    return pm, pf


_P_MALE_COND, _P_FEMALE_COND = _conditional_rates()

# Within each gender, attributes other than Male and the hair colours are drawn through
# a Gaussian copula: z = sqrt(1 - |L|^2) e - L f, attribute = z < Phi^-1(p). The
# marginals stay exact whatever L is; L (hand-set, not fitted) adds the obvious
# correlations: age, smile, beard, make-up, weight and hair texture factors.
_FACTORS = ("age", "smile", "beard", "glam", "heavy", "texture")
_LOADINGS = {
    "Young": {"age": -0.6},
    "Bald": {"age": 0.5},
    "Receding_Hairline": {"age": 0.5},
    "Bags_Under_Eyes": {"age": 0.4, "heavy": 0.3},
    "Double_Chin": {"age": 0.3, "heavy": 0.6},
    "Chubby": {"heavy": 0.7, "age": 0.2},
    "Eyeglasses": {"age": 0.3},
    "Attractive": {"age": -0.4, "heavy": -0.3, "glam": 0.4},
    "Smiling": {"smile": 0.7},
    "Mouth_Slightly_Open": {"smile": 0.5},
    "High_Cheekbones": {"smile": 0.6},
    "No_Beard": {"beard": -0.7},
    "Goatee": {"beard": 0.6},
    "Mustache": {"beard": 0.6},
    "Sideburns": {"beard": 0.5},
    "5_o_Clock_Shadow": {"beard": 0.3},
    "Heavy_Makeup": {"glam": 0.7},
    "Wearing_Lipstick": {"glam": 0.7},
    "Arched_Eyebrows": {"glam": 0.4},
    "Wearing_Earrings": {"glam": 0.3},
    "Wearing_Necklace": {"glam": 0.3},
    "Rosy_Cheeks": {"glam": 0.3},
    "Oval_Face": {"heavy": -0.3},
    "Big_Nose": {"heavy": 0.2, "age": 0.2},
    "Wavy_Hair": {"texture": 0.5},
    "Straight_Hair": {"texture": -0.5},
}
_HAIR_COLOURS = ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair")  # + "other" (auburn/red)


def _copula_tables():
    load = np.zeros((NUM_ATTRIBUTES, len(_FACTORS)))
    for name, row in _LOADINGS.items():
        for f, v in row.items():
            load[A[name], _FACTORS.index(f)] = v
    resid = np.sqrt(1.0 - (load**2).sum(1))
    nd = NormalDist()

    def thresholds(p):
        return np.array([-np.inf if q <= 0 else np.inf if q >= 1 else nd.inv_cdf(q) for q in p])

    return load, resid, thresholds(_P_MALE_COND), thresholds(_P_FEMALE_COND)


_LOAD, _RESID, _THRESH_MALE, _THRESH_FEMALE = _copula_tables()
_COPULA_MASK = np.ones(NUM_ATTRIBUTES, bool)
_COPULA_MASK[[A["Male"]] + [A[n] for n in _HAIR_COLOURS]] = False


def sample_attributes(rng: np.random.Generator) -> np.ndarray:
    """One CelebA-like attribute vector, int32 [40] of 0/1.

    Male ~ Bernoulli(CelebA rate); then, given the gender, every other attribute has
    exactly its CelebA conditional rate, so every marginal is CelebA's. Hair colour is
    one category (black / brown / blond / gray / other), so at most one colour is set;
    its uniform draw loads on the age factor so gray hair goes with age.
    """
    out = np.zeros(NUM_ATTRIBUTES, np.int32)
    male = rng.random() < CELEBA_ATTRIBUTE_RATES[A["Male"]]
    out[A["Male"]] = male
    f = rng.standard_normal(len(_FACTORS))
    e = rng.standard_normal(NUM_ATTRIBUTES)
    z = _RESID * e - _LOAD @ f  # minus: a positive loading makes the attribute likelier
    thresh = _THRESH_MALE if male else _THRESH_FEMALE
    out[_COPULA_MASK] = (z < thresh)[_COPULA_MASK]
    # Hair colour: u uniform (a Gaussian with 0.5 age loading pushed through Phi), gray last.
    u = NormalDist().cdf(0.5 * f[0] + math.sqrt(0.75) * rng.standard_normal())
    cond = _P_MALE_COND if male else _P_FEMALE_COND
    probs = [cond[A[n]] for n in _HAIR_COLOURS]
    # Order on the unit interval: other, black, brown, blond, gray (gray at the old end).
    edge = 1.0 - sum(probs)
    for n, q in zip(_HAIR_COLOURS, probs):
        if edge <= u < edge + q:
            out[A[n]] = 1
        edge += q
    return out


def attributes_labels(seed: int, split: str, index: int) -> np.ndarray:
    """The attribute vector of example ``index`` without drawing it (same stream, same values)."""
    return sample_attributes(example_rng(seed, "attributes", split, index))
