"""Export, serving and client."""
