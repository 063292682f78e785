"""Gin configuration files (base, suites, methods, presets), shipped as package data."""
