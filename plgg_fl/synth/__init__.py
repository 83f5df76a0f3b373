"""plgg_fl.synth: a seeded, realistic synthetic three-site pLGG cohort (see docs/synthetic_cohort.md).

``generate_cohort(out_dir, seed=0, size="demo", ...) -> {site: manifest path}``.
"""

from plgg_fl.synth.cohort import GENERATOR_VERSION, SITES, SIZES, generate_cohort

__all__ = ["GENERATOR_VERSION", "SITES", "SIZES", "generate_cohort"]
