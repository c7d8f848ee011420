"""Code shared by the services (deployment options, ...)."""
