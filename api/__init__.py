"""The HTTP scoring service: thin FastAPI routes over `risk`."""
