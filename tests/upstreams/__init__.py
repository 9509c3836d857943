"""Job servers written apart from ``jobserver/``, for testing the proxy against others."""
