"""naslung.data"""
