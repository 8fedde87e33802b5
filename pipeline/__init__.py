"""Transfer learning with the backbone f and the head g split: f runs once, g trains on cached f(x)."""

__version__ = "0.1.0"
