"""Ray Serve glue: one module per deployment, and ``app.build_app`` that builds the graph."""
