"""posttrain.report"""
