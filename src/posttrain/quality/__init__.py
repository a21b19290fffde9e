"""posttrain.quality"""
