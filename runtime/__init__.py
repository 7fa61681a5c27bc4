"""Deployment runtime (never imports torch): cascade planning, backends, image I/O."""
