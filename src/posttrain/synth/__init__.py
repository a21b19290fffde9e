"""posttrain.synth"""
