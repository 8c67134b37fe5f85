"""The {package} flobc project: its model (model.py) and its data (data.py)."""
