"""The pipeline's flows: one module per flow, each referenced by an entrypoint in prefect.yaml."""
