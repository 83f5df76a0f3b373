"""plgg_fl.review: the clinical review kit, run at a site - blinded packets (``plgg-fl review-packet``) and
scoring of filled rating sheets (``plgg-fl review-score``). Only the aggregate scores are meant to leave."""
