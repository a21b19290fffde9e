"""posttrain.serve"""
