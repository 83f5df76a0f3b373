"""plgg_fl.fl"""
