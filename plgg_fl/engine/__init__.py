"""plgg_fl.engine"""
