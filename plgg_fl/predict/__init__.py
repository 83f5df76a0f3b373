"""plgg_fl.predict: clinical inference (``plgg-fl predict``, ``plgg-fl export``); see docs/inference.md."""
