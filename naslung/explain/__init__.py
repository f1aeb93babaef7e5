"""naslung.explain"""
