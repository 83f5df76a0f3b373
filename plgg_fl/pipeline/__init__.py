"""plgg_fl.pipeline"""
