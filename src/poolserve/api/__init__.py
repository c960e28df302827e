"""The HTTP layer: FastAPI app factory, routers, middleware, error mapping. No torch."""
