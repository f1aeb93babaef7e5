"""naslung.ensemble"""
