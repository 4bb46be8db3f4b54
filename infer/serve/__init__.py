"""`infer serve`: compiled models over HTTP (KServe v2 REST, pipeline routes, Prometheus)."""

from infer.serve.app import Served, ServeOptions, create_app, load_served

__all__ = ["ServeOptions", "Served", "create_app", "load_served", "serve_app"]


def serve_app(served: Served, host: str, port: int, options: ServeOptions | None = None) -> None:
    """Serve what load_served loaded on host:port until interrupted."""
    import uvicorn

    uvicorn.run(create_app(served, options), host=host, port=port, log_level="warning")
