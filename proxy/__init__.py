"""meshnode's shared node proxy."""
