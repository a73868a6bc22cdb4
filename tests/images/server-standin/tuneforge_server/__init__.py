"""The stand-in's copy of the server package name, so the Deployment's readiness probe runs."""
