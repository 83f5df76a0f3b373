"""plgg_fl.data"""
