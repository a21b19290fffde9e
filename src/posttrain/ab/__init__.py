"""posttrain.ab"""
