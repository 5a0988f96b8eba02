"""Graft's JSON API (``/api/v1/``): Django REST framework views over ``webapp.services``."""
