"""Code generated from proto/naslung/v1 by `python -m service.codegen`. Do not edit."""
