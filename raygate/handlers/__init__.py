"""HTTP and WebSocket handlers of the Kernel Gateway API, one module per resource."""
