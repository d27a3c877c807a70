"""The control plane every Detrix client serves (the OpenAPI file in spec/)."""
