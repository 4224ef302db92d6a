"""Example services built on app_kernel."""
