"""posttrain.judge"""
