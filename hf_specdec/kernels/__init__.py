"""kernels: see README's table."""
