"""Small utilities shared across fusionkit."""
