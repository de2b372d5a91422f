"""hub: see README's table."""
