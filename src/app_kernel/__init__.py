"""app_kernel."""
