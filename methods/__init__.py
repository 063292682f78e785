"""Masking strategies, one module per method. Importing this package registers them all."""
