"""naslung.train"""
