"""plgg_fl.synth"""
