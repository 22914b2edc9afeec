"""The ground layer: settings, errors, secrets and connection URLs.

Every other layer may import it; it imports nothing else of weir.
"""
